import { connectionIdentity } from '../../lib/nats.ts';
import { Redis } from 'ioredis';
import t from 'tap';
import { subjects } from '../../contracts/index.ts';
import { createRedis } from '../../lib/redis.ts';
import { checkNothingLost } from './checker.ts';
import { sleep, startFaultStack, waitHealthy, waitUntil } from './harness.ts';
import { Ledger, send, startLoad, type Ledger as L, type User } from './load.ts';
import { makeUsers, rawRequest } from './scenario.ts';
import { startWatchers, type Watcher } from './watchers.ts';
import type { FaultStack } from './harness.ts';

/**
 * Fault 4: Redis (idempotency answers, limits, tickets, cache) is killed, later flushed, later
 * black-holed behind a TCP proxy (connections stay open, nothing moves), later slowed down. Redis is an
 * accelerator, never the record: every request still gets one correct answer from the event
 * store, a repeated request id the same answer, and the notifier lets clients in with the `auth`
 * message while it cannot issue tickets.
 */

/**
 * Sends answered request ids again, with a new message id so that JetStream does not drop them
 * and a dispatcher must find the answer (Redis, or the store when Redis has lost it). Only
 * requests answered at least 2 s ago: a repeat that arrives while the dispatcher is still
 * finishing the first delivery is a case of its own, tested below.
 */
async function repeatAnswered(
  fs: FaultStack,
  ledger: L,
  users: User[],
  n: number,
  tag: string,
): Promise<number> {
  await sleep(2_000);
  const answered = ledger
    .answered()
    .filter((e) => !e.raw && e.answeredAt !== null && e.answeredAt < Date.now() - 2_000)
    .slice(-n);
  const tokens = new Map(users.map((u) => [u.userId, u.token]));
  const answers = await Promise.all(
    answered.map(async (e) => {
      const a = await rawRequest(fs.nc, {
        subject: subjects.request(e.userId, connectionIdentity(fs.nc)),
        body: { requestId: e.requestId, tool: e.tool, args: e.args },
        token: tokens.get(e.userId)!,
        msgId: `${e.userId}:${e.requestId}:${tag}`,
        timeoutMs: 30_000,
      });
      if (a) ledger.answer(e.userId, e.requestId, a);
      return a;
    }),
  );
  return answers.filter((a) => a !== null).length;
}

const dropAll = (watchers: Watcher[]) => watchers.forEach((w) => w.drop());

t.test('Redis killed, flushed, black-holed and slowed: every answer is still right', async (t) => {
  const fs = await startFaultStack(t, { redisProxy: true });
  const proxy = fs.redisProxy!;
  const users = await makeUsers(fs, 'rd', 4);
  const watchers = startWatchers(fs.url('notifier'), users);
  t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
  const ledger = new Ledger();
  const load = startLoad({ agent: fs.agent, ledger, users, concurrency: 2, seed: 41, repeatRate: 0.15 });
  await load.answersAfter(15);

  await t.test('killed', async (t) => {
    await fs.redis.kill('SIGKILL');
    dropAll(watchers);
    await load.answersAfter(15, 60_000);
    t.pass('requests are answered while Redis is down');
    t.equal(
      await repeatAnswered(fs, ledger, users, 10, 'down'),
      10,
      'repeated request ids are answered from the store',
    );
    const readies = watchers.map((w) => w.readies);
    dropAll(watchers);
    await waitUntil('every client to subscribe again', () =>
      watchers.every((w, i) => w.readies > readies[i]!),
    );
    t.pass('clients got back in without tickets (the auth message)');
    await fs.redis.start();
    await load.answersAfter(10, 60_000);
  });

  await t.test('flushed', async (t) => {
    const direct = new Redis(fs.redis.url, { lazyConnect: true });
    await direct.connect();
    await direct.flushall();
    await direct.quit();
    t.equal(
      await repeatAnswered(fs, ledger, users, 15, 'flushed'),
      15,
      'answers Redis forgot come from the store',
    );
    await load.answersAfter(15, 60_000);
  });

  await t.test('black-holed', async (t) => {
    // A network that drops every packet: connections stay open and nothing moves (TCP holds the
    // bytes and delivers them, in order, when the network is back). The proxy's `stall` is that;
    // its `blackhole` discards bytes mid-stream, which TCP never does.
    const probe = createRedis(proxy.url('redis'));
    t.teardown(() => probe.disconnect());
    await waitUntil('the probe client to connect', () => probe.status === 'ready');
    proxy.set({ kind: 'stall' });
    dropAll(watchers);
    const held = await Promise.allSettled([probe.get('probe:x'), probe.get('probe:y')]);
    t.ok(
      held.every((r) => r.status === 'rejected'),
      'Redis commands fail fast (500 ms) while nothing comes back',
    );
    await load.answersAfter(10, 60_000);
    t.pass('requests are answered while Redis is unreachable');
    t.equal(await repeatAnswered(fs, ledger, users, 10, 'hole'), 10, 'repeats answered meanwhile');
    proxy.set({ kind: 'pass' });
    await waitHealthy(fs, ['dispatcher']);
    t.pass('the dispatcher reports Redis healthy again');
    const keys = Array.from({ length: 10 }, (_, i) => `probe:${i}`);
    for (const k of keys) await probe.set(k, k);
    t.strictSame(
      await Promise.all(keys.map((k) => probe.get(k))),
      keys,
      'after the outage each reply belongs to its own command',
    );
    await load.answersAfter(15, 60_000);
    t.equal(
      await repeatAnswered(fs, ledger, users, 20, 'after'),
      20,
      'and repeats answered after it came back',
    );
  });

  await t.test('slow (150 ms each way)', async (t) => {
    proxy.set({ kind: 'delay', ms: 150 });
    await load.answersAfter(10, 60_000);
    t.pass('requests are answered while Redis is slow');
    // The agent retries at once with a new message id (as an agent that lost its inbox would):
    // the first delivery has answered but is still telling Redis about it (a slow round trip).
    await waitHealthy(fs, ['dispatcher']);
    const user = users[0]!;
    let unanswered = 0;
    for (let i = 0; i < 3; i++) {
      const requestId = `join-${i}-${Date.now()}`;
      const first = await send(fs.agent, ledger, user, requestId, { tool: 'noop', args: {} });
      t.ok(first, `the first delivery is answered (${i + 1})`);
      const again = await rawRequest(fs.nc, {
        subject: subjects.request(user.userId, connectionIdentity(fs.nc)),
        body: { requestId, tool: 'noop', args: {} },
        token: user.token,
        msgId: `${user.userId}:${requestId}:again`,
        timeoutMs: 5_000,
      });
      if (again) ledger.answer(user.userId, requestId, again);
      else unanswered++;
    }
    t.equal(unanswered, 0, 'a repeat arriving right after the answer is answered too');
    // Back to normal without reordering bytes: the proxy sends new data at once in `pass` mode
    // while delayed chunks still wait, so hold new data (`stall`) until the delayed chunks are out.
    proxy.set({ kind: 'stall' });
    await sleep(500);
    proxy.set({ kind: 'pass' });
    await load.answersAfter(10, 60_000);
  });

  await load.stop();
  await waitHealthy(fs, ['dispatcher', 'projector', 'notifier']);
  await checkNothingLost(t, { store: fs.store, pool: fs.pool, ledger, watchers });
  t.strictSame(fs.unexpectedExits(), [], 'no service process ended');
});
