import t from 'tap';
import { signToken } from '../../lib/auth.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import { recordExecution } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { startProjector } from './app.ts';
import { TEST_SECRET, testConfig, waitForCatchUp, countingStore } from './testkit.ts';

const at = (minute: number, second = 0) => new Date(Date.UTC(2025, 0, 1, 10, minute, second));

t.test('query API', async (t) => {
  const db = await createTestDatabase(t);
  const store = countingStore(await createPostgresEventStore({ connectionString: db.url }));
  t.teardown(() => store.close());

  const alice = await recordExecution(store, 'alice', {
    tool: 'echo',
    outcome: 'completed',
    durationMs: 10,
    at: at(0, 1),
  });
  const aliceFailed = await recordExecution(store, 'alice', {
    tool: 'search',
    outcome: 'failed',
    code: 'TIMEOUT',
    durationMs: 200,
    at: at(0, 2),
  });
  await recordExecution(store, 'alice', {
    tool: 'echo',
    outcome: 'refused',
    code: 'FORBIDDEN',
    at: at(5, 0),
  });
  await recordExecution(store, 'alice', { tool: 'echo', outcome: 'executing', at: at(6, 0) });
  const bob = await recordExecution(store, 'bob', {
    tool: 'echo',
    outcome: 'completed',
    durationMs: 30,
    at: at(0, 3),
  });
  // A tool with a known latency distribution: 1..100 ms, every tenth one failed.
  for (let i = 1; i <= 100; i++) {
    await recordExecution(store, 'carol', {
      tool: 'probe',
      outcome: i % 10 === 0 ? 'failed' : 'completed',
      code: 'TOOL_ERROR',
      durationMs: i,
      at: at(10 + (i % 2), 0),
    });
  }

  const p = await startProjector(testConfig(db.url), { store });
  t.teardown(() => p.close());
  await waitForCatchUp(p.pool, store);

  const token = (sub: string, roles: string[] = []) => signToken(TEST_SECRET, { sub, roles });
  const get = async (url: string, sub: string | null, roles: string[] = []) => {
    const res = await p.app.inject({
      url,
      headers: sub === null ? {} : { authorization: `Bearer ${await token(sub, roles)}` },
    });
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are checked field by field
    return { status: res.statusCode, body: res.json<Record<string, any>>(), headers: res.headers };
  };

  t.test('no token, a bad token or an expired one: 401 on every route', async (t) => {
    for (const url of [
      '/executions',
      `/executions/${alice.executionId}`,
      '/tools/metrics',
      '/users/alice/activity',
    ]) {
      const none = await get(url, null);
      t.equal(none.status, 401, `${url} without a token`);
      t.equal(none.body.error.code, 'UNAUTHENTICATED');
      t.equal(none.headers['www-authenticate'], 'Bearer');
      const forged = await p.app.inject({
        url,
        headers: {
          authorization: `Bearer ${await signToken('another-secret-0123456789abcdefghij', { sub: 'alice' })}`,
        },
      });
      t.equal(forged.statusCode, 401, `${url} with a token signed by another key`);
      const expired = await p.app.inject({
        url,
        headers: {
          authorization: `Bearer ${await signToken(TEST_SECRET, { sub: 'alice' }, Math.floor(Date.now() / 1000) - 60)}`,
        },
      });
      t.equal(expired.statusCode, 401, `${url} with an expired token`);
      t.equal(expired.json<{ error: { details: { reason: string } } }>().error.details.reason, 'expired');
    }
    t.equal((await p.app.inject({ url: '/health/live' })).statusCode, 200, 'health needs no token');
    t.equal((await p.app.inject({ url: '/metrics' })).statusCode, 200, 'metrics need no token');
  });

  t.test('a user sees their own executions only', async (t) => {
    const mine = await get('/executions', 'alice');
    t.equal(mine.status, 200);
    t.equal(mine.body.items.length, 4);
    t.ok(mine.body.items.every((e: { userId: string }) => e.userId === 'alice'));
    t.strictSame(
      mine.body.items.map((e: { requestedAt: string }) => e.requestedAt),
      [at(6).toISOString(), at(5).toISOString(), at(0, 2).toISOString(), at(0, 1).toISOString()],
      'newest first',
    );
    t.equal(mine.body.nextCursor, null);

    const one = await get(`/executions/${alice.executionId}`, 'alice');
    t.equal(one.status, 200);
    t.match(one.body, {
      executionId: alice.executionId,
      userId: 'alice',
      requestId: alice.requestId,
      tool: 'echo',
      status: 'completed',
      attempts: 1,
      durationMs: 10,
      error: null,
      events: 3,
      lastRevision: 2,
    });
    const failed = await get(`/executions/${aliceFailed.executionId}`, 'alice');
    t.match(failed.body, { status: 'failed', error: { code: 'TIMEOUT', message: 'it failed' } });

    const other = await get(`/executions/${bob.executionId}`, 'alice');
    t.equal(other.status, 404, "another user's execution is not found");
    t.equal(other.body.error.code, 'NOT_FOUND');
    const missing = await get('/executions/00000000-0000-4000-8000-000000000000', 'alice');
    t.strictSame(
      { status: missing.status, code: missing.body.error.code },
      { status: other.status, code: other.body.error.code },
      'and answered exactly like a missing one',
    );
    t.equal(
      (await get('/executions?userId=bob', 'alice')).status,
      403,
      "asking for another user's list is forbidden",
    );
    t.equal((await get('/executions?userId=alice', 'alice')).body.items.length, 4, 'naming oneself is fine');
    t.equal((await get('/users/bob/activity', 'alice')).status, 403);
  });

  t.test('an admin sees every user, and may filter by user', async (t) => {
    const all = await get('/executions?limit=500', 'root', ['admin']);
    t.equal(all.body.items.length, 105);
    t.equal((await get(`/executions/${bob.executionId}`, 'root', ['admin'])).body.userId, 'bob');
    const bobs = await get('/executions?userId=bob', 'root', ['admin']);
    t.strictSame(
      bobs.body.items.map((e: { executionId: string }) => e.executionId),
      [bob.executionId],
    );
    const activity = await get('/users/alice/activity', 'root', ['admin']);
    t.equal(activity.status, 200);
    t.equal((await get('/users/nobody/activity', 'root', ['admin'])).status, 404, 'no activity: 404');
    t.equal(
      (await get('/executions', 'root', ['billing'])).body.items.length,
      0,
      'other roles are plain users (the console roles are tested in console-access.int.spec.ts)',
    );
  });

  t.test('filters: status, tool, time range', async (t) => {
    const ids = async (query: string) =>
      (await get(`/executions?${query}`, 'alice')).body.items.map(
        (e: { status: string; tool: string }) => `${e.tool}:${e.status}`,
      ) as string[];
    t.strictSame(await ids('status=failed'), ['echo:failed', 'search:failed']);
    t.strictSame(await ids('status=executing'), ['echo:executing']);
    t.strictSame(await ids('tool=search'), ['search:failed']);
    t.strictSame(await ids(`from=${at(0).toISOString()}&to=${at(1).toISOString()}`), [
      'search:failed',
      'echo:completed',
    ]);
    t.strictSame(
      await ids(`from=${encodeURIComponent('2025-01-01T11:05:00+01:00')}`),
      ['echo:executing', 'echo:failed'],
      'offsets are understood',
    );
    t.strictSame(await ids('tool=echo&status=completed'), ['echo:completed']);
    t.strictSame(await ids('code=TIMEOUT'), ['search:failed'], 'by error code');
    t.strictSame(await ids('status=failed&code=FORBIDDEN'), ['echo:failed'], 'a refusal is failed too');
    t.strictSame(await ids('code=CANCELLED'), []);
  });

  t.test('paging with a cursor visits every row once', async (t) => {
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page = await get(`/executions?limit=7${cursor ? `&cursor=${cursor}` : ''}`, 'carol');
      t.equal(page.status, 200);
      t.ok(page.body.items.length <= 7);
      seen.push(...page.body.items.map((e: { executionId: string }) => e.executionId));
      cursor = page.body.nextCursor;
      pages++;
    } while (cursor && pages < 50);
    t.equal(pages, 15);
    t.equal(seen.length, 100);
    t.equal(new Set(seen).size, 100, 'no row twice');
  });

  t.test('bad query parameters: 400 with the reason', async (t) => {
    for (const [url, pattern] of [
      ['/executions?limit=0', /limit/],
      ['/executions?limit=501', /limit/],
      ['/executions?limit=ten', /limit/],
      ['/executions?status=lost', /status/],
      ['/executions?code=cancelled', /code/],
      ['/executions?from=yesterday', /from/],
      ['/executions?from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z', /from must be before to/],
      ['/executions?userId=a.b', /userId/],
      ['/executions?stauts=failed', /stauts/],
      ['/executions?cursor=bm9wZQ', /cursor/],
      ['/executions?status=failed&status=completed', /status/],
      ['/executions/not-a-uuid', /UUID/],
      ['/tools/metrics?from=2025-13-01T00:00:00Z', /from/],
      ['/tools/metrics?window=1h', /window/],
      ['/users/a.b/activity', /userId/],
    ] as const) {
      const res = await get(url, 'alice');
      t.equal(res.status, 400, url);
      t.equal(res.body.error.code, 'BAD_REQUEST', url);
      t.match(res.body.error.message, pattern, `${url}: ${res.body.error.message}`);
    }
  });

  t.test('tool metrics: counts, error rate, latency quantiles', async (t) => {
    const res = await get('/tools/metrics', 'dave');
    t.equal(res.status, 200, 'any signed-in user may read aggregate tool metrics');
    t.equal(res.body.granularity, 'all-time');
    const byTool = Object.fromEntries(res.body.tools.map((r: { tool: string }) => [r.tool, r]));
    t.strictSame(Object.keys(byTool), ['echo', 'probe', 'search']);
    t.match(byTool['echo'], {
      total: 3,
      completed: 2,
      failed: 0,
      refused: 1,
      errorRate: 0,
      errorCodes: { FORBIDDEN: 1 },
    });
    t.match(byTool['search'], {
      total: 1,
      failed: 1,
      errorRate: 1,
      errorCodes: { TIMEOUT: 1 },
      latencyMs: { count: 1, max: 200 },
    });
    const probe = byTool['probe'];
    t.match(probe, {
      total: 100,
      completed: 90,
      failed: 10,
      refused: 0,
      errorRate: 0.1,
      errorCodes: { TOOL_ERROR: 10 },
    });
    t.equal(probe.latencyMs.count, 100);
    t.equal(probe.latencyMs.mean, 50.5);
    t.equal(probe.latencyMs.max, 100);
    for (const [q, exact] of [
      ['p50', 50],
      ['p95', 95],
      ['p99', 99],
    ] as const) {
      const v = probe.latencyMs[q];
      t.ok(Math.abs(v - exact) / exact < 0.2, `${q} = ${v}, exact ${exact}`);
    }

    const one = await get('/tools/metrics?tool=probe', 'dave');
    t.strictSame(one.body.tools, [probe], 'filter by tool');

    const minute10 = await get(
      `/tools/metrics?tool=probe&from=${at(10).toISOString()}&to=${at(11).toISOString()}`,
      'dave',
    );
    t.equal(minute10.body.granularity, 'minute');
    t.match(minute10.body.tools, [{ tool: 'probe', total: 50 }], 'a time range sums its minutes');
    const both = await get(`/tools/metrics?from=${at(10).toISOString()}&to=${at(12).toISOString()}`, 'dave');
    t.strictSame(both.body.tools, [probe], 'every minute of a tool sums to its all-time row');
    const early = await get(`/tools/metrics?to=${at(1).toISOString()}`, 'dave');
    t.match(
      early.body.tools.map((r: { tool: string; total: number }) => [r.tool, r.total]),
      [
        ['echo', 2],
        ['search', 1],
      ],
    );
    const none = await get(`/tools/metrics?from=${at(30).toISOString()}`, 'dave');
    t.strictSame(none.body.tools, []);
  });

  t.test('user activity', async (t) => {
    const res = await get('/users/alice/activity', 'alice');
    t.equal(res.status, 200);
    t.strictSame(res.body, {
      userId: 'alice',
      executions: 4,
      completed: 1,
      failed: 1,
      refused: 1,
      inFlight: 1,
      events: 3 + 3 + 2 + 2,
      firstActivityAt: at(0, 1).toISOString(),
      lastActivityAt: at(6, 0).toISOString(),
    });
    t.equal((await get('/users/dave/activity', 'dave')).status, 404, 'a user without activity: 404');
  });

  t.test('projection status is for admins', async (t) => {
    t.equal((await get('/projection', 'alice')).status, 403);
    const res = await get('/projection', 'root', ['admin']);
    t.equal(res.status, 200);
    t.match(res.body, {
      projection: 'read-models',
      instance: { state: 'active', paused: false },
      checkpoint: { events: 10 + 3 + 300 },
    });
  });
});
