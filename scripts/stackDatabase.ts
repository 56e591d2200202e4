/**
 * The database of the stack `npm start` runs here, for the command-line tools run beside it
 * (`npm run audit`, `npm run rebuild`): unless the environment names one (DATABASE_URL), it is the
 * stack's own (its socket, whichever port it was started with), with the stack's secrets. Without a stack
 * here it says so and exits 2. (The tools alone default to DATABASE_URL's development default,
 * which is not the stack's database.)
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LOCAL_DIR, localDatabaseUrl, parseEnv, postgresSocketDirFile } from './local.ts';

/**
 * Sets DATABASE_URL to the stack's database when it is not set, and returns the stack's secrets
 * then (null when the environment named a database: another deployment's, not given this stack's
 * secrets).
 */
export function useStackDatabase(env: NodeJS.ProcessEnv, otherwise: string): Record<string, string> | null {
  if (env['DATABASE_URL'] !== undefined) return null;
  const secretsFile = join(LOCAL_DIR, 'secrets.env');
  if (!existsSync(secretsFile)) {
    console.error(`no stack here (${secretsFile} is missing): run \`npm start\` once, or ${otherwise}`);
    process.exit(2);
  }
  const secrets = parseEnv(readFileSync(secretsFile, 'utf8'));
  const socketDirFile = postgresSocketDirFile(LOCAL_DIR);
  if (!existsSync(socketDirFile)) {
    console.error(`the stack's PostgreSQL has not run here (${socketDirFile} is missing): run \`npm start\``);
    process.exit(2);
  }
  const socketDir = readFileSync(socketDirFile, 'utf8').trim();
  env['DATABASE_URL'] = localDatabaseUrl(secrets, stackPostgresPort(socketDir, env), socketDir);
  return secrets;
}

/**
 * The port the stack's PostgreSQL numbers its socket with: the one its socket directory holds
 * (`.s.PGSQL.<port>`, whatever TOOLBUS_POSTGRES_PORT the stack was started with), else
 * TOOLBUS_POSTGRES_PORT, else 5433.
 */
export function stackPostgresPort(socketDir: string, env: NodeJS.ProcessEnv): number {
  let names: string[] = [];
  try {
    names = readdirSync(socketDir);
  } catch {
    // not running: the connection will say so
  }
  const socket = names.map((n) => /^\.s\.PGSQL\.(\d+)$/.exec(n)).find((m) => m !== null);
  return Number(socket?.[1] ?? env['TOOLBUS_POSTGRES_PORT'] ?? 5433);
}
