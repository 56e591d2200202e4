import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { signToken } from '../../lib/auth.ts';
import { freePort, waitForPort } from '../../test/support/ports.ts';
import { openTestStore, recordHistory } from './testkit.ts';

/** The service process: starts from its environment, serves the audit routes, stops on SIGTERM. */
t.test('main.ts runs the auditor service until SIGTERM', async (t) => {
  const { url, store } = await openTestStore(t);
  await recordHistory(store, 'alice', 2);
  const port = await freePort();
  const secret = randomBytes(32).toString('hex');
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', fileURLToPath(new URL('./main.ts', import.meta.url))],
    {
      env: {
        PATH: process.env['PATH'] ?? '',
        DATABASE_URL: url,
        AUDITOR_PORT: String(port),
        JWT_SECRET: secret,
        AUDIT_SIGNING_KEY: randomBytes(32).toString('hex'),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  await waitForPort(port, 30_000);
  const res = await fetch(`http://127.0.0.1:${port}/audit/users/alice/verify`, {
    headers: { authorization: `Bearer ${await signToken(secret, { sub: 'ida', roles: ['auditor'] })}` },
  });
  t.equal(res.status, 200);
  t.match(await res.json(), { ok: true, events: 6 });
  t.match(out, /"msg":"auditor ready"/, 'logs its readiness');
  child.kill('SIGTERM');
  t.equal(await exited, 0, 'stops cleanly on SIGTERM');
});
