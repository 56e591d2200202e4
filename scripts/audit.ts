/**
 * `npm run audit -- <replay|verify|checkpoint> <user id> [options]`: the audit CLI
 * (services/auditor/cli.ts, docs/auditing.md) against the stack `npm start` runs here. Unless the
 * environment names a store (DATABASE_URL or KURRENTDB_URL) and a key (AUDIT_SIGNING_KEY), they are
 * the stack's: its PostgreSQL on TOOLBUS_POSTGRES_PORT (5433) and the key in .toolbus/secrets.env.
 * (The CLI alone defaults to DATABASE_URL's development default, which is not the stack's database.)
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LOCAL_DIR, localDatabaseUrl, parseEnv } from './local.ts';

const env = process.env;
const secretsFile = join(LOCAL_DIR, 'secrets.env');
const ownStore = env['DATABASE_URL'] === undefined && env['KURRENTDB_URL'] === undefined;
if (ownStore || env['AUDIT_SIGNING_KEY'] === undefined) {
  if (!existsSync(secretsFile)) {
    console.error(
      `no stack here (${secretsFile} is missing): run \`npm start\` once, ` +
        'or set DATABASE_URL and AUDIT_SIGNING_KEY to audit another deployment',
    );
    process.exit(2);
  }
  const secrets = parseEnv(readFileSync(secretsFile, 'utf8'));
  if (ownStore) {
    env['DATABASE_URL'] = localDatabaseUrl(secrets, Number(env['TOOLBUS_POSTGRES_PORT'] ?? 5433));
  }
  env['AUDIT_SIGNING_KEY'] ??= secrets['AUDIT_SIGNING_KEY'];
}
await import('../services/auditor/cli.ts');
