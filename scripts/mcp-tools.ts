/**
 * `npm run mcp-tools`: the MCP tool provider (services/mcp-tools) against the stack that `npm start`
 * runs, as its `mcp-tools` identity, with its worker secret (both from .toolbus/), serving the MCP
 * servers of toolbus.json (or TOOLBUS_CONFIG). Any NATS_URL, NATS_* credential or WORKER_SECRET in
 * the environment is used instead.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LOCAL_DIR } from './local.ts';

const env = process.env;
const seedFile = join(LOCAL_DIR, 'nats', 'mcp-tools.nk');
const secretsFile = join(LOCAL_DIR, 'secrets.env');
const ownCredentials = [
  'NATS_NKEY_SEED',
  'NATS_NKEY_SEED_FILE',
  'NATS_CREDS',
  'NATS_USER',
  'NATS_TOKEN',
].some((k) => env[k]);
if (!env['NATS_URL']) env['NATS_URL'] = `nats://127.0.0.1:${env['TOOLBUS_NATS_PORT'] ?? '4223'}`;
if (!ownCredentials && existsSync(seedFile)) env['NATS_NKEY_SEED_FILE'] = seedFile;
if (!env['WORKER_SECRET'] && existsSync(secretsFile)) {
  const generated = /^WORKER_SECRET=(.+)$/m.exec(readFileSync(secretsFile, 'utf8'))?.[1]?.trim();
  if (generated) env['WORKER_SECRET'] = generated;
}
if (!existsSync(seedFile) && !ownCredentials) {
  console.error(
    'no .toolbus/nats/mcp-tools.nk: run `npm start` once first (it makes the identities and authorizes ' +
      'the namespaces of toolbus.json), or set NATS_* credentials',
  );
  process.exit(2);
}
await import('../services/mcp-tools/main.ts');
