/**
 * `npm run -s audit -- <replay|verify|checkpoint> <user id> [options]`: the audit CLI
 * (services/auditor/cli.ts, docs/auditing.md) against the stack `npm start` runs here. Unless the
 * environment names a database (DATABASE_URL: the PostgreSQL event store, and the audit log also
 * when KURRENTDB_URL names the store), it is the stack's (scripts/stackDatabase.ts), and then so
 * is the signing key (AUDIT_SIGNING_KEY, from .toolbus/secrets.env) unless that is set. Another
 * deployment's database is never given this stack's key.
 */
import { useStackDatabase } from './stackDatabase.ts';

const secrets = useStackDatabase(
  process.env,
  'set DATABASE_URL and AUDIT_SIGNING_KEY to audit another deployment',
);
if (secrets) process.env['AUDIT_SIGNING_KEY'] ??= secrets['AUDIT_SIGNING_KEY'];
await import('../services/auditor/cli.ts');
