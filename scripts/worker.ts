/**
 * `npm run worker`: the example tool worker (services/dispatcher/worker.ts) against the stack that
 * `npm start` runs, as its `worker` identity, with its worker secret (both from .toolbus/). Any
 * NATS_URL, NATS_* credential or WORKER_SECRET in the environment is used instead. Its log lines
 * are shown as `npm start` shows the services' (time, name, level, message).
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { prettyLine } from './launcher.ts';
import { LOCAL_DIR } from './local.ts';

const env = process.env;
const seedFile = join(LOCAL_DIR, 'nats', 'worker.nk');
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
    'no .toolbus/nats/worker.nk: run `npm start` once first (it makes the identities), or set NATS_* credentials',
  );
  process.exit(2);
}
// The worker runs as a child so that its JSON log lines can be shown as `npm start` shows the
// services' (prettyLine); Ctrl-C reaches it with the terminal's process group, SIGTERM is passed on.
const child = spawn(
  process.execPath,
  ['--import', 'tsx', fileURLToPath(new URL('../services/dispatcher/worker.ts', import.meta.url))],
  { env, stdio: ['ignore', 'pipe', 'pipe'] },
);
for (const stream of [child.stdout, child.stderr]) {
  createInterface({ input: stream }).on('line', (line) =>
    console.log(prettyLine({ service: 'worker', line })),
  );
}
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => child.kill(signal));
// 'close', not 'exit': its last lines (why it stopped) are printed first.
child.once('close', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
