/**
 * Runs a Toolbus process against the stack that `npm start` runs, as one of its identities (the
 * nkey seed and the worker secret from .toolbus/), unless the environment already gives NATS_URL,
 * NATS_* credentials or WORKER_SECRET. Used by `npm run worker` and `npm run mcp-tools`.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { prettyLine } from './launcher.ts';
import { LOCAL_DIR } from './local.ts';

export function runAsLocalIdentity(o: {
  /** The identity (its seed is `.toolbus/nats/<identity>.nk`). */
  identity: string;
  /** The process's entry file (absolute). */
  entry: string;
  /** The name its log lines are shown under. */
  label: string;
}): void {
  const env = process.env;
  const seedFile = join(LOCAL_DIR, 'nats', `${o.identity}.nk`);
  const secretsFile = join(LOCAL_DIR, 'secrets.env');
  const ownCredentials = [
    'NATS_NKEY_SEED',
    'NATS_NKEY_SEED_FILE',
    'NATS_CREDS',
    'NATS_USER',
    'NATS_TOKEN',
  ].some((k) => env[k]);
  const stackNats = `nats://127.0.0.1:${env['TOOLBUS_NATS_PORT'] ?? '4223'}`;
  if (!env['NATS_URL']) env['NATS_URL'] = stackNats;
  // The stack's own NATS proves itself with the certificate its CA signed (scripts/localTls.ts).
  const ca = join(LOCAL_DIR, 'nats', 'tls', 'ca.pem');
  if (!env['NATS_TLS_CA'] && env['NATS_URL'] === stackNats && existsSync(ca)) env['NATS_TLS_CA'] = ca;
  if (!ownCredentials && existsSync(seedFile)) env['NATS_NKEY_SEED_FILE'] = seedFile;
  if (!env['WORKER_SECRET'] && existsSync(secretsFile)) {
    const generated = /^WORKER_SECRET=(.+)$/m.exec(readFileSync(secretsFile, 'utf8'))?.[1]?.trim();
    if (generated) env['WORKER_SECRET'] = generated;
  }
  if (!existsSync(seedFile) && !ownCredentials) {
    console.error(
      `no .toolbus/nats/${o.identity}.nk: run \`npm start\` once first (it makes the identities), or set NATS_* credentials`,
    );
    process.exit(2);
  }
  // A child, so that its JSON log lines can be shown as `npm start` shows the services'
  // (prettyLine); Ctrl-C reaches it with the terminal's process group, SIGTERM is passed on.
  const child = spawn(process.execPath, ['--import', 'tsx', o.entry], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream }).on('line', (line) =>
      console.log(prettyLine({ service: o.label, line })),
    );
  }
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => child.kill(signal));
  // 'close', not 'exit': its last lines (why it stopped) are printed first.
  child.once('close', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
}
