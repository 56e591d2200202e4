import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import type { ToolManifest } from '../../contracts/index.ts';
import { AuthError, signToken, tokenVerifierFromConfig } from '../../lib/auth.ts';
import { ConfigError, loadConfig } from '../../lib/config.ts';
import { createAnnouncement, verifyAnnouncement } from '../../lib/tools/remote.ts';
import { AuditorEnv, AuditorServerEnv } from '../../services/auditor/config.ts';
import { DispatcherEnv } from '../../services/dispatcher/config.ts';
import { NotifierEnv } from '../../services/notifier/config.ts';
import { ProjectorEnv } from '../../services/projector/config.ts';

/**
 * The attack: the JWT key and the worker key used to default to constants written in the
 * repository, so anyone could mint an admin token or sign a worker announcement. Now no key has a
 * default: a service without its key does not start, and what was signed with the old constants
 * is refused by services configured as they now must be.
 */

// The defaults Toolbus had before issue 15, as published in the repository.
const OLD_JWT_SECRET = 'toolbus-development-secret-do-not-use-in-production';
const OLD_WORKER_SECRET = `${OLD_JWT_SECRET}-workers`;

const key = () => randomBytes(32).toString('hex');
/** Everything a service needs but its keys, pointing nowhere (a service that started anyway could reach nothing). */
const NOWHERE = {
  NODE_ENV: 'production',
  NATS_URL: 'nats://127.0.0.1:1',
  DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none',
  REDIS_URL: 'redis://127.0.0.1:1',
};

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e.problems.map((p) => p.split(':')[0]!);
    throw e;
  }
  return [];
}

t.test('each service configuration without its keys fails, naming the variables', async (t) => {
  const cases = [
    ['dispatcher', () => loadConfig(DispatcherEnv, NOWHERE), ['JWT_SECRET', 'WORKER_SECRET']],
    ['notifier', () => loadConfig(NotifierEnv, NOWHERE), ['JWT_SECRET']],
    ['projector', () => loadConfig(ProjectorEnv, NOWHERE), ['JWT_SECRET']],
    ['auditor service', () => loadConfig(AuditorServerEnv, NOWHERE), ['AUDIT_SIGNING_KEY', 'JWT_SECRET']],
    ['auditor CLI', () => loadConfig(AuditorEnv, NOWHERE), ['AUDIT_SIGNING_KEY']],
  ] as const;
  for (const [service, load, variables] of cases) {
    t.strictSame(problemsOf(load).sort(), [...variables], service);
  }
  t.strictSame(
    problemsOf(() => loadConfig(DispatcherEnv, { ...NOWHERE, JWKS_URL: 'https://id.example/jwks' })),
    ['WORKER_SECRET'],
    'a key set replaces JWT_SECRET, not the worker key',
  );
});

t.test('each service process without its keys stops at start-up, naming the variables', async (t) => {
  const services = [
    ['services/dispatcher/main.ts', ['JWT_SECRET', 'WORKER_SECRET']],
    ['services/dispatcher/worker.ts', ['WORKER_SECRET']],
    ['services/notifier/main.ts', ['JWT_SECRET']],
    ['services/projector/main.ts', ['JWT_SECRET']],
    ['services/auditor/main.ts', ['AUDIT_SIGNING_KEY', 'JWT_SECRET']],
  ] as const;
  await Promise.all(
    services.map(async ([file, variables]) => {
      const run = await runService(file);
      t.not(run.code, 0, `${file} exits with an error`);
      for (const name of variables) t.match(run.output, `${name}: must be set`, `${file} names ${name}`);
    }),
  );
});

t.test('a token minted with the old well-known secret is refused', async (t) => {
  for (const [service, schema] of [
    ['dispatcher', DispatcherEnv],
    ['notifier', NotifierEnv],
    ['projector', ProjectorEnv],
    ['auditor', AuditorServerEnv],
  ] as const) {
    const config = loadConfig(schema, {
      ...NOWHERE,
      JWT_SECRET: key(),
      WORKER_SECRET: key(),
      AUDIT_SIGNING_KEY: key(),
    });
    const verifier = tokenVerifierFromConfig(config);
    const minted = await signToken(OLD_JWT_SECRET, { sub: 'mallory', roles: ['admin', 'auditor'] });
    const refused = await verifier.verify(minted).then(
      () => null,
      (e: unknown) => e,
    );
    t.ok(refused instanceof AuthError && refused.reason === 'invalid', `${service}: refused as invalid`);
    const legitimate = await signToken(config.JWT_SECRET!, { sub: 'alice', roles: ['user'] });
    t.equal((await verifier.verify(legitimate)).userId, 'alice', `${service}: its own tokens still verify`);
  }
});

t.test('a worker announcement signed with the old well-known worker secret is refused', async (t) => {
  const config = loadConfig(DispatcherEnv, { ...NOWHERE, JWT_SECRET: key(), WORKER_SECRET: key() });
  const manifest: ToolManifest = {
    name: 'exfiltrate',
    version: '1.0.0',
    description: 'announced by an impostor',
    inputSchema: { type: 'object' },
    outputSchema: { type: 'object' },
    roles: [],
    timeoutMs: 2_000,
    idempotent: true,
    cacheable: false,
    sensitive: { input: [], output: [] },
  };
  const now = Date.now();
  const forged = createAnnouncement('rogue', [manifest], OLD_WORKER_SECRET, now);
  t.match(verifyAnnouncement(forged, config.WORKER_SECRET, now, 60_000), {
    ok: false,
    reason: /signature does not match/,
  });
  const genuine = createAnnouncement('worker-1', [manifest], config.WORKER_SECRET, now);
  t.match(verifyAnnouncement(genuine, config.WORKER_SECRET, now, 60_000), { ok: true });
});

/** Runs a service's entry point with no keys; resolves with its exit code and everything it printed. */
function runService(file: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', fileURLToPath(new URL(`../../${file}`, import.meta.url))],
      { env: { PATH: process.env['PATH'] ?? '', ...NOWHERE }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    // A service that did start (a default came back) is stopped, and the test fails on its output.
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(guard);
      resolve({ code, output });
    });
  });
}
