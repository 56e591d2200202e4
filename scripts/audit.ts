/**
 * `npm run -s audit -- <replay|verify|checkpoint> <user id> [options]`: the audit CLI
 * (services/auditor/cli.ts, docs/auditing.md) against the stack `npm start` runs here. Unless the
 * environment names a database (DATABASE_URL: the PostgreSQL event store, and the audit log also
 * when KURRENTDB_URL names the store), it is the stack's (its socket, TOOLBUS_POSTGRES_PORT 5433), and
 * then so is the signing key (AUDIT_SIGNING_KEY, from .toolbus/secrets.env) unless that is set.
 * Another deployment's database is never given this stack's key. (The CLI alone defaults to
 * DATABASE_URL's development default, which is not the stack's database.)
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LOCAL_DIR, localDatabaseUrl, parseEnv, postgresSocketDirFile } from './local.ts';

const env = process.env;
if (env['DATABASE_URL'] === undefined) {
  const secretsFile = join(LOCAL_DIR, 'secrets.env');
  if (!existsSync(secretsFile)) {
    console.error(
      `no stack here (${secretsFile} is missing): run \`npm start\` once, ` +
        'or set DATABASE_URL and AUDIT_SIGNING_KEY to audit another deployment',
    );
    process.exit(2);
  }
  const secrets = parseEnv(readFileSync(secretsFile, 'utf8'));
  const socketDirFile = postgresSocketDirFile(LOCAL_DIR);
  if (!existsSync(socketDirFile)) {
    console.error(`the stack's PostgreSQL has not run here (${socketDirFile} is missing): run \`npm start\``);
    process.exit(2);
  }
  env['DATABASE_URL'] = localDatabaseUrl(
    secrets,
    Number(env['TOOLBUS_POSTGRES_PORT'] ?? 5433),
    readFileSync(socketDirFile, 'utf8').trim(),
  );
  env['AUDIT_SIGNING_KEY'] ??= secrets['AUDIT_SIGNING_KEY'];
}
await import('../services/auditor/cli.ts');
