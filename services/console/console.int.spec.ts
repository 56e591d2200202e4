import { createServer, type Socket } from 'node:net';
import t from 'tap';
import { signToken } from '../../lib/auth.ts';
import { loadConfig } from '../../lib/config.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import { recordExecution } from '../../test/support/events.ts';
import { freePort } from '../../test/support/ports.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { startProjector } from '../projector/app.ts';
import { countingStore, TEST_SECRET, testConfig, waitFor, waitForCatchUp } from '../projector/testkit.ts';
import { startConsole } from './app.ts';
import { ConsoleEnv } from './config.ts';

/**
 * The console's own surface against a real projector: its page's files with a strict policy, and
 * /api forwarding exactly the listed calls with the caller's token, the service's answer (refusals
 * included) passed back as it is, and a service that is down reported as such.
 */
t.test('console', async (t) => {
  const db = await createTestDatabase(t);
  // Counted, so the catch-up waits for every append (the store's head alone can lag under load).
  const store = countingStore(await createPostgresEventStore({ connectionString: db.url }));
  t.teardown(() => store.close());
  const alice = await recordExecution(store, 'alice', { tool: 'echo' });
  await recordExecution(store, 'bob', { tool: 'echo' });
  const projector = await startProjector(testConfig(db.url), { store });
  t.teardown(() => projector.close());
  await waitForCatchUp(projector.pool, store);
  const nobody = `http://127.0.0.1:${await freePort()}`;
  const consoleApp = await startConsole(
    loadConfig(ConsoleEnv, {
      NODE_ENV: 'test',
      LOG_LEVEL: 'silent',
      CONSOLE_PORT: '0',
      CONSOLE_PROJECTOR_URL: projector.url,
      CONSOLE_DISPATCHER_URL: nobody,
      CONSOLE_AUDITOR_URL: nobody,
    }),
  );
  t.teardown(() => consoleApp.close());
  const get = (url: string, token?: string) =>
    fetch(`${consoleApp.url}${url}`, token ? { headers: { authorization: `Bearer ${token}` } } : {});
  const operator = await signToken(TEST_SECRET, { sub: 'olga', roles: ['operator'] });
  const plain = await signToken(TEST_SECRET, { sub: 'alice' });

  t.test('the page and uPlot are served with a policy that allows only this origin', async (t) => {
    for (const [path, type] of [
      ['/', /text\/html/],
      ['/app.js', /javascript/],
      ['/views/metrics.js', /javascript/],
      ['/vendor/uPlot.esm.js', /javascript/],
      ['/vendor/uPlot.min.css', /text\/css/],
    ] as const) {
      const res = await get(path);
      t.equal(res.status, 200, path);
      t.match(res.headers.get('content-type'), type);
      t.match(
        res.headers.get('content-security-policy'),
        /default-src 'none'; script-src 'self'.*connect-src 'self';/,
      );
    }
    t.match(await (await get('/vendor/uPlot.esm.js')).text(), /export \{ uPlot as default \}|export default/);
    t.equal((await get('/../package.json')).status, 404, 'no other file');
    t.equal((await get('/public/app.js')).status, 404);
  });

  t.test('calls are forwarded with the token; the service decides', async (t) => {
    const all = await get('/api/executions', operator);
    t.equal(all.status, 200);
    t.equal(all.headers.get('cache-control'), 'no-store');
    const body = (await all.json()) as { items: Array<{ userId: string }> };
    t.same(
      new Set(body.items.map((e) => e.userId)),
      new Set(['alice', 'bob']),
      "an operator sees every user's",
    );
    const own = (await (await get('/api/executions', plain)).json()) as { items: Array<{ userId: string }> };
    t.same(
      own.items.map((e) => e.userId),
      ['alice'],
      'a plain user: their own only',
    );
    const refused = await get('/api/executions?userId=bob', plain);
    t.equal(refused.status, 403, "the projector's refusal comes back");
    t.match(await refused.json(), { error: { code: 'FORBIDDEN' } });
    const one = await get(`/api/executions/${alice.executionId}`, operator);
    t.match(await one.json(), { executionId: alice.executionId, userId: 'alice' }, 'path parameters');
    const none = await get('/api/executions');
    t.equal(none.status, 401, 'no token: 401 from the service');
    t.equal(none.headers.get('www-authenticate'), 'Bearer');
    const series = await get('/api/tools/metrics/series', operator);
    t.equal(series.status, 200, 'the chart series');
  });

  t.test('only the listed calls are forwarded', async (t) => {
    for (const path of ['/api/projection', '/api/metrics', '/api/health/ready', '/api/executions/x/y/z']) {
      t.equal((await get(path, operator)).status, 404, path);
    }
    const post = await fetch(`${consoleApp.url}/api/executions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${operator}`, 'content-type': 'application/json' },
      body: '{"tool":"echo","args":{}}',
    });
    t.equal(post.status, 404, 'the console starts no executions');
  });

  t.test('a service that is down: 502 in the API error shape', async (t) => {
    const res = await get('/api/approvals', operator);
    t.equal(res.status, 502);
    t.match(await res.json(), { error: { code: 'UPSTREAM_UNAVAILABLE', message: /dispatcher/ } });
  });
});

t.test('a service that does not answer: calls in flight bounded; a deadline', async (t) => {
  // A service that takes connections and never answers them (until the test drops them).
  const held: Socket[] = [];
  const silent = createServer((socket) => void held.push(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const drop = () => held.forEach((socket) => socket.destroy());
  t.teardown(() => {
    drop();
    silent.close();
  });
  const address = silent.address();
  const url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  const start = async (env: Record<string, string>) => {
    const c = await startConsole(
      loadConfig(ConsoleEnv, {
        NODE_ENV: 'test',
        LOG_LEVEL: 'silent',
        CONSOLE_PORT: '0',
        CONSOLE_PROJECTOR_URL: url,
        CONSOLE_DISPATCHER_URL: url,
        CONSOLE_AUDITOR_URL: url,
        ...env,
      }),
    );
    t.teardown(() => c.close());
    return (path: string) => fetch(`${c.url}${path}`, { headers: { authorization: 'Bearer x' } });
  };

  t.test('beyond CONSOLE_MAX_IN_FLIGHT a call is refused at once', async (t) => {
    const get = await start({ CONSOLE_MAX_IN_FLIGHT: '2', CONSOLE_UPSTREAM_TIMEOUT_MS: '600000' });
    const waiting = [get('/api/executions'), get('/api/approvals')];
    await waitFor(() => held.length === 2, { what: 'both calls at the silent service' });
    const third = await get('/api/tools/metrics');
    t.equal(third.status, 503);
    t.equal(third.headers.get('retry-after'), '1');
    t.match(await third.json(), { error: { code: 'OVERLOADED' } });
    drop();
    for (const res of await Promise.all(waiting)) {
      t.equal(res.status, 502, 'a dropped connection: the service is not reachable');
      t.match(await res.json(), { error: { code: 'UPSTREAM_UNAVAILABLE' } });
    }
    const after = get('/api/executions');
    await waitFor(() => held.length === 3, { what: 'a slot free again: the call reaches the service' });
    drop();
    t.equal((await after).status, 502);
  });

  t.test('a call the service does not answer within the deadline: 504', async (t) => {
    const get = await start({ CONSOLE_UPSTREAM_TIMEOUT_MS: '200' });
    const res = await get('/api/executions');
    t.equal(res.status, 504);
    t.match(await res.json(), {
      error: { code: 'UPSTREAM_TIMEOUT', message: /did not answer within 200 ms/ },
    });
  });
});
