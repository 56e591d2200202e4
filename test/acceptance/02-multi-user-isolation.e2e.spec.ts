/**
 * Scenario 2 — several users at once, each with secrets in their arguments.
 *
 * Proves, against the running stack: while five users run tools concurrently, (a) the fields a
 * tool marks sensitive (echo's `secret`, secret_vault_check's `apiKey`) never appear in clear
 * anywhere — not in any stored event, WebSocket notification, read-model row, Redis key or value,
 * service log line, nor in the agent's answer; (b) each user's private but non-sensitive data
 * (free-text notes, cached payloads) appears only in that user's own stream, notifications and
 * Redis keys, never in another user's; (c) tokens never reach the logs; (d) another user's
 * execution cannot be read through the dispatcher or projector APIs.
 */
import { randomBytes } from 'node:crypto';
import t from 'tap';
import { subscribe, type TestClient } from '../../services/notifier/test-client.ts';
import { startTestStack } from '../support/stack.ts';
import {
  committedUserEvents,
  dbPool,
  http,
  newUserId,
  projectorCaughtUp,
  readModelText,
  redisDump,
  terminal,
  userEvents,
  waitUntil,
} from './support.ts';

const s = await startTestStack(t);
const pool = dbPool(t, s);

interface Tenant {
  userId: string;
  token: string;
  secret: string;
  apiKey: string;
  note: string;
  cachePayload: string;
  socket: TestClient;
}

const rand = () => randomBytes(12).toString('hex');

const tenants: Tenant[] = [];
for (let i = 0; i < 5; i++) {
  const userId = newUserId(`tenant${i}`);
  const token = await s.token(userId);
  const socket = await subscribe(s.url('notifier'), token);
  t.teardown(() => socket.ws.close());
  tenants.push({
    userId,
    token,
    secret: `SECRET_${i}_${rand()}`,
    apiKey: `sk_live_${rand()}${rand()}`,
    note: `NOTE_${i}_${rand()}`,
    cachePayload: `CACHE_${i}_${rand()}`,
    socket,
  });
}

// Every user's requests, interleaved across users and started together.
const calls = tenants.flatMap((u) => [
  () => s.agent.execute('echo', { secret: u.secret, note: u.note, n: 1 }, { token: u.token }),
  () => s.agent.execute('echo', { secret: u.secret, note: u.note, n: 2 }, { token: u.token }),
  () =>
    s.agent.execute(
      'secret_vault_check',
      { apiKey: u.apiKey, expectedFormat: 'stripe_key' },
      { token: u.token },
    ),
  () => s.agent.execute('cached_echo', { payload: u.cachePayload }, { token: u.token }),
]);
const order = calls.map((_, i) => i).sort((a, b) => (a % 4) - (b % 4) || a - b);
const answers = await Promise.all(order.map((i) => calls[i]!().then((a) => ({ i, a: terminal(a) }))));
const byUser = (u: number) =>
  answers
    .filter(({ i }) => Math.floor(i / 4) === u)
    .sort((a, b) => a.i - b.i)
    .map((x) => x.a);

// The cached call again, now served from the per-user cache. The dispatcher fills the cache just
// after it answers, so wait until every user's entry is there first.
await waitUntil(
  'the result cache entries',
  async () =>
    (await redisDump(s.redis.url)).filter((r) => r.key.includes(':r:cached_echo@')).length === tenants.length,
);
const cachedAgain = await Promise.all(
  tenants.map((u) =>
    s.agent.execute('cached_echo', { payload: u.cachePayload }, { token: u.token }).then(terminal),
  ),
);

await projectorCaughtUp(s, pool);
for (const u of tenants) {
  const events = await userEvents(s.store, u.userId);
  await u.socket.waitFor(`${u.userId}'s notifications`, () => u.socket.events().length >= events.length);
}

t.test('each user gets their own answers, with sensitive fields redacted', async (t) => {
  tenants.forEach((u, n) => {
    const [echo1, echo2, vault, cached] = byUser(n);
    for (const [k, a] of [
      ['echo 1', echo1],
      ['echo 2', echo2],
    ] as const) {
      t.equal(a?.status, 'completed', `${u.userId} ${k} completed`);
      t.same(
        a?.status === 'completed' ? a.result : null,
        { secret: '[REDACTED]', note: u.note, n: k === 'echo 1' ? 1 : 2 },
        `${u.userId} ${k}: own note back, secret redacted`,
      );
    }
    t.equal(vault?.status, 'completed', `${u.userId} key check completed`);
    const v = vault?.status === 'completed' ? (vault.result as Record<string, unknown>) : {};
    t.equal(v['detectedFormat'], 'stripe_key', 'the key was read as a Stripe key');
    t.equal(v['length'], u.apiKey.length, 'its length');
    t.equal(cached?.status, 'completed');
    const first = cached?.status === 'completed' ? (cached.result as { args: unknown; runId: string }) : null;
    t.same(first?.args, { payload: u.cachePayload }, 'cached_echo returned the user own payload');
    const again = cachedAgain[n]!;
    t.ok(again.status === 'completed' && again.cached, 'the second identical call is served from the cache');
    t.equal(
      again.status === 'completed' ? (again.result as { runId: string }).runId : null,
      first?.runId,
      'the cache gave the user their own earlier result',
    );
  });
});

t.test('sensitive values appear in clear nowhere', async (t) => {
  const storeText: string[] = [];
  for (const u of tenants) {
    for (const e of await userEvents(s.store, u.userId))
      storeText.push(JSON.stringify([e.recorded.streamId, e.recorded.data, e.recorded.metadata]));
  }
  t.equal(await committedUserEvents(s, pool), storeText.length, 'the tenants streams are all there is');
  const allStore = storeText.join('\n');
  const allNotes = tenants.map((u) => JSON.stringify(u.socket.received)).join('\n');
  const models = Object.values(await readModelText(pool)).join('\n');
  const redis = JSON.stringify(await redisDump(s.redis.url));
  const logs = s.logText();
  t.ok(logs.length > 0, 'the services logged');
  const answersText = JSON.stringify([answers, cachedAgain]);
  for (const u of tenants) {
    for (const [what, value] of [
      ['secret', u.secret],
      ['api key', u.apiKey],
    ] as const) {
      t.notOk(allStore.includes(value), `${u.userId}'s ${what} is not in the event store`);
      t.notOk(allNotes.includes(value), `${u.userId}'s ${what} is in no notification`);
      t.notOk(models.includes(value), `${u.userId}'s ${what} is in no read model`);
      t.notOk(redis.includes(value), `${u.userId}'s ${what} is not in Redis`);
      t.notOk(logs.includes(value), `${u.userId}'s ${what} is in no log line`);
      t.notOk(answersText.includes(value), `${u.userId}'s ${what} is in no answer`);
    }
    t.notOk(logs.includes(u.token), `${u.userId}'s token is in no log line`);
    t.notOk(logs.includes(u.note) || logs.includes(u.cachePayload), `${u.userId}'s arguments are not logged`);
  }
  const stored = await userEvents(s.store, tenants[0]!.userId);
  const requested = stored.filter((e) => e.event.type === 'ToolRequested' && e.event.data.tool === 'echo');
  t.ok(
    requested.every((e) => e.event.type === 'ToolRequested' && e.event.data.args['secret'] === '[REDACTED]'),
    'the stored request says the secret was there, redacted',
  );
  t.ok(
    requested.every((e) => e.event.type === 'ToolRequested' && e.event.data.redacted.includes('secret')),
    'and lists it as redacted',
  );
});

t.test("no user's data reaches another user", async (t) => {
  const redis = await redisDump(s.redis.url);
  for (const u of tenants) {
    const others = tenants.filter((o) => o !== u);
    const own = JSON.stringify((await userEvents(s.store, u.userId)).map((e) => e.event));
    t.ok(own.includes(u.note) && own.includes(u.cachePayload), `${u.userId}'s stream holds their own data`);
    for (const o of others) {
      t.notOk(
        own.includes(o.note) || own.includes(o.cachePayload),
        `${u.userId}'s stream holds nothing of ${o.userId}`,
      );
    }
    const notes = u.socket.received;
    t.ok(
      notes.every((n) => (n.kind !== 'event' && n.kind !== 'progress' ? true : n.userId === u.userId)),
      `${u.userId}'s socket received only their own events`,
    );
    const seen = JSON.stringify(notes);
    t.ok(seen.includes(u.note), `${u.userId}'s socket showed their own note`);
    t.notOk(
      others.some((o) => seen.includes(o.note) || seen.includes(o.cachePayload) || seen.includes(o.userId)),
      `${u.userId}'s socket showed nothing of the others`,
    );
    t.same(
      u.socket.revisions(),
      Array.from({ length: u.socket.revisions().length }, (_, i) => i),
      `${u.userId}'s socket got revisions 0..n once each`,
    );

    for (const value of [u.note, u.cachePayload]) {
      const holders = redis.filter((r) => r.key.includes(value) || r.value.includes(value));
      t.ok(holders.length > 0, `Redis holds ${u.userId}'s data (answers, cache)`);
      t.ok(
        holders.every((r) => r.key.startsWith(`tb:{${u.userId}}:`)),
        `only under ${u.userId}'s own keys: ${holders.map((r) => r.key).join(', ')}`,
      );
    }
  }
  const cacheKeys = redis.filter((r) => r.key.includes(':r:cached_echo@'));
  t.equal(cacheKeys.length, tenants.length, 'one cache entry per user, never shared');
});

t.test("another user's execution cannot be read", async (t) => {
  const [a, b] = tenants as [Tenant, Tenant];
  const aExecution = byUser(0)[0]!.executionId!;
  const own = await http(`${s.url('dispatcher')}/executions/${aExecution}`, { token: a.token });
  t.equal(own.status, 200, 'the owner reads it from the dispatcher');
  const other = await http(`${s.url('dispatcher')}/executions/${aExecution}`, { token: b.token });
  t.equal(other.status, 404, 'another user gets 404 from the dispatcher');
  t.notOk(JSON.stringify(other.body).includes(a.note), 'and nothing of it');
  await waitUntil(
    'the projector row',
    async () =>
      (await http(`${s.url('projector')}/executions/${aExecution}`, { token: a.token })).status === 200,
  );
  const proj = await http(`${s.url('projector')}/executions/${aExecution}`, { token: b.token });
  t.equal(proj.status, 404, 'another user gets 404 from the projector');
  const list = await http<{ items: Array<{ userId: string }> }>(
    `${s.url('projector')}/executions?limit=500`,
    { token: b.token },
  );
  t.ok(
    list.body.items.length > 0 && list.body.items.every((i) => i.userId === b.userId),
    'a user lists only their own executions',
  );
  const activity = await http(`${s.url('projector')}/users/${a.userId}/activity`, { token: b.token });
  t.equal(activity.status, 403, "another user's activity is forbidden");
});
