import t from 'tap';
import { signToken } from '../../lib/auth.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import { recordExecution } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { startProjector } from './app.ts';
import { countingStore, TEST_SECRET, testConfig, waitForCatchUp } from './testkit.ts';

/**
 * The operator console's reads: the console's roles (operator, approver, auditor) read every user's
 * executions and activity as an admin does, a plain user still only their own; and the per-minute
 * series behind the console's charts.
 */
const at = (minute: number, second = 0) => new Date(Date.UTC(2025, 0, 1, 10, minute, second));

t.test('console reads', async (t) => {
  const db = await createTestDatabase(t);
  // Counted, so the catch-up waits for every append (the store's head alone can lag under load).
  const store = countingStore(await createPostgresEventStore({ connectionString: db.url }));
  t.teardown(() => store.close());
  const alice = await recordExecution(store, 'alice', { tool: 'echo', durationMs: 10, at: at(0, 1) });
  const bob = await recordExecution(store, 'bob', { tool: 'echo', durationMs: 30, at: at(0, 30) });
  await recordExecution(store, 'bob', {
    tool: 'echo',
    outcome: 'failed',
    code: 'TOOL_ERROR',
    durationMs: 50,
    at: at(2, 0),
  });
  await recordExecution(store, 'carol', { tool: 'search', durationMs: 7, at: at(2, 10) });
  const p = await startProjector(testConfig(db.url), { store });
  t.teardown(() => p.close());
  await waitForCatchUp(p.pool, store);

  const get = async (url: string, sub: string, roles: string[] = []) => {
    const res = await p.app.inject({
      url,
      headers: { authorization: `Bearer ${await signToken(TEST_SECRET, { sub, roles })}` },
    });
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are checked field by field
    return { status: res.statusCode, body: res.json<Record<string, any>>() };
  };

  for (const role of ['operator', 'approver', 'auditor']) {
    t.test(`role ${role} reads every user's executions and activity`, async (t) => {
      const all = await get('/executions', 'olga', [role]);
      t.equal(all.status, 200);
      t.same(
        new Set(all.body.items.map((e: { userId: string }) => e.userId)),
        new Set(['alice', 'bob', 'carol']),
      );
      const bobs = await get('/executions?userId=bob&status=failed', 'olga', [role]);
      t.equal(bobs.body.items.length, 1, "filtered to bob's failure");
      t.equal(bobs.body.items[0].error.code, 'TOOL_ERROR');
      t.equal((await get(`/executions/${alice.executionId}`, 'olga', [role])).body.userId, 'alice');
      t.equal((await get('/users/bob/activity', 'olga', [role])).body.executions, 2);
    });
  }

  t.test('a plain user (or an unrelated role) is still refused other users', async (t) => {
    for (const roles of [[], ['user'], ['operators'], ['billing']]) {
      const list = await get('/executions?userId=bob', 'alice', roles);
      t.equal(list.status, 403, `list with roles [${roles.join(',')}]`);
      t.equal(list.body.error.code, 'FORBIDDEN');
      t.match(list.body.error.message, /operator/, 'the refusal names the roles that may');
      t.equal(
        (await get(`/executions/${bob.executionId}`, 'alice', roles)).status,
        404,
        'one: as if missing',
      );
      t.equal((await get('/users/bob/activity', 'alice', roles)).status, 403);
      const own = await get('/executions', 'alice', roles);
      t.same(
        own.body.items.map((e: { userId: string }) => e.userId),
        ['alice'],
        'without a filter: only their own',
      );
    }
  });

  t.test('the projection status stays for admins only', async (t) => {
    t.equal((await get('/projection', 'olga', ['operator'])).status, 403);
  });

  t.test('GET /tools/metrics/series: one point per active minute per tool', async (t) => {
    const r = await get(
      `/tools/metrics/series?from=${at(0).toISOString()}&to=${at(5).toISOString()}`,
      'alice',
    );
    t.equal(r.status, 200);
    t.equal(r.body.granularity, 'minute');
    t.same(
      r.body.tools.map((s: { tool: string }) => s.tool),
      ['echo', 'search'],
    );
    const echo = r.body.tools[0].points;
    t.same(
      echo.map((p: { minute: string }) => p.minute),
      [at(0).toISOString(), at(2).toISOString()],
      'the minutes with activity, in order',
    );
    t.match(echo[0], { completed: 2, failed: 0, errorRate: 0, latencyMs: { count: 2, max: 30 } });
    t.match(echo[1], { completed: 0, failed: 1, errorRate: 1, latencyMs: { count: 1, max: 50 } });
    t.ok(echo[0].latencyMs.p50 > 0 && echo[0].latencyMs.p99 <= 30, 'percentiles within the minute');

    const one = await get(
      `/tools/metrics/series?tool=search&from=${at(0).toISOString()}&to=${at(5).toISOString()}`,
      'alice',
    );
    t.same(
      one.body.tools.map((s: { tool: string }) => s.tool),
      ['search'],
      'filtered to one tool',
    );
    const before = await get(
      `/tools/metrics/series?from=${at(0).toISOString()}&to=${at(2).toISOString()}`,
      'alice',
    );
    t.equal(before.body.tools[0].points.length, 1, '`to` is exclusive');
  });

  t.test('GET /tools/metrics/series refuses a bad range', async (t) => {
    const backwards = await get(
      `/tools/metrics/series?from=${at(5).toISOString()}&to=${at(0).toISOString()}`,
      'alice',
    );
    t.equal(backwards.status, 400);
    t.match(backwards.body.error.message, /from must be before to/);
    const long = await get(
      `/tools/metrics/series?from=2025-01-01T00:00:00Z&to=2025-01-03T00:00:00Z`,
      'alice',
    );
    t.equal(long.status, 400);
    t.match(long.body.error.message, /24 hours/);
    const bad = await get('/tools/metrics/series?from=yesterday', 'alice');
    t.equal(bad.status, 400);
    t.equal((await get('/tools/metrics/series?extra=1', 'alice')).status, 400, 'unknown parameters refused');
  });
});
