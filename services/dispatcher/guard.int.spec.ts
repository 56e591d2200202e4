/**
 * The per-user rate limit judges a request by when its agent sent it (JetStream's timestamp), so
 * that a backlog admitted in one burst after an outage is not turned into refusals. While Redis is
 * down, its failed calls are logged per outage and interval, not per call.
 */
import t from 'tap';
import { createRedis } from '../../lib/redis.ts';
import { startRedis } from '../../test/support/processes.ts';
import { Guard, RedisOutageLog } from './guard.ts';
import { eventually } from './test/harness.ts';

const server = await startRedis(t);
const redis = createRedis(server.url);
t.teardown(() => redis.quit());
// The client queues nothing while it connects: wait until it is ready.
if (redis.status !== 'ready') await new Promise((resolve) => redis.once('ready', resolve));
const errors: string[] = [];
const guard = new Guard(
  redis,
  { ratePerSec: 2, burst: 2, userConcurrency: 1000, cacheTtlSec: 60, answerTtlSec: 60 },
  { failed: (op, e) => errors.push(`${op}: ${e.message}`), succeeded: () => undefined },
);
t.teardown(() => guard.close());

const admitAll = async (user: string, sentAts: (number | undefined)[]) => {
  const kinds: string[] = [];
  for (const [i, sentAt] of sentAts.entries()) {
    const a = await guard.admit({
      userId: user,
      requestId: `r-${i}`,
      slot: `s-${i}`,
      slotTtlMs: 60_000,
      ...(sentAt === undefined ? {} : { sentAt }),
    });
    kinds.push(a.kind);
  }
  return kinds;
};

t.test('a backlog sent within the rate is admitted in one burst, judged by when it was sent', async (t) => {
  // Ten requests sent one second apart during an outage (2/s allowed), all admitted now.
  const start = Date.now() - 60_000;
  const kinds = await admitAll(
    'backlog',
    Array.from({ length: 10 }, (_, i) => start + i * 1_000),
  );
  t.same(kinds, Array(10).fill('go'), 'none is refused');
  t.same(errors, []);
});

t.test('requests sent in a burst above the rate are still limited', async (t) => {
  const sent = Date.now() - 30_000;
  const kinds = await admitAll('burst', Array(6).fill(sent));
  t.same(kinds.slice(0, 2), ['go', 'go'], 'the burst allowance passes');
  t.same(kinds.slice(2), Array(4).fill('rate_limited'), 'the rest, sent at the same moment, are limited');
});

t.test('without a sent time, or with one in the future, the time of admission judges', async (t) => {
  const future = Date.now() + 3_600_000;
  const kinds = await admitAll('now', [undefined, future, undefined, future]);
  t.same(kinds.slice(0, 2), ['go', 'go']);
  t.same(kinds.slice(2), ['rate_limited', 'rate_limited'], 'a future sent time buys nothing');
});

t.test('a request refused for the concurrency limit spends no token of the rate', async (t) => {
  const g = new Guard(
    redis,
    // One token, refilled once a day: a second token spent would refuse the third request.
    { ratePerSec: 1 / 86_400, burst: 2, userConcurrency: 1, cacheTtlSec: 60, answerTtlSec: 60 },
    { failed: (op, e) => errors.push(`${op}: ${e.message}`), succeeded: () => undefined },
  );
  t.teardown(() => g.close());
  const admit = (n: number) =>
    g.admit({ userId: 'busy-rate', requestId: `b-${n}`, slot: `s-${n}`, slotTtlMs: 60_000 });
  t.match(await admit(1), { kind: 'go' }, 'the first runs');
  t.match(await admit(2), { kind: 'busy' }, 'the second is refused while the first runs');
  t.match(await admit(3), { kind: 'busy' }, 'and so is the third');
  await g.release('busy-rate', 's-1');
  t.match(
    await admit(4),
    { kind: 'go' },
    'once the first is done, the token the refused ones did not spend is there',
  );
  t.match(await admit(5), { kind: 'rate_limited' }, 'the rate still holds: the burst of 2 is spent');
  t.same(errors, []);
});

t.test('a request sent earlier than the last one judged gets no refill from the past', async (t) => {
  const now = Date.now();
  const kinds = await admitAll('late', [now - 1_000, now - 1_000, now - 20_000, now - 20_000]);
  t.same(kinds, ['go', 'go', 'rate_limited', 'rate_limited']);
});

t.test(
  'Redis down for long: a line per interval counting the calls left out, one when it is back',
  async (t) => {
    const own = await startRedis(t);
    const client = createRedis(own.url);
    t.teardown(() => client.disconnect());
    if (client.status !== 'ready') await new Promise((resolve) => client.once('ready', resolve));
    const lines: Array<{ level: string; msg: string; fields: Record<string, unknown> }> = [];
    const log = {
      warn: (fields: Record<string, unknown>, msg: string) => lines.push({ level: 'warn', msg, fields }),
      info: (fields: Record<string, unknown>, msg: string) => lines.push({ level: 'info', msg, fields }),
    };
    let clock = 0; // the test's clock: only it moves time on
    const outage = new RedisOutageLog(log, 10_000, () => clock);
    const g = new Guard(
      client,
      { ratePerSec: 1000, burst: 1000, userConcurrency: 1000, cacheTtlSec: 60, answerTtlSec: 60 },
      outage,
    );
    const peekMany = (n: number) =>
      Promise.all(Array.from({ length: n }, (_, i) => g.peek('ola', `r-${i}`))).then((r) =>
        r.map((p) => p.kind),
      );
    t.same(await peekMany(5), Array(5).fill('none'), 'Redis answers');
    t.same(lines, [], 'nothing logged');

    await own.kill('SIGKILL');
    t.same(await peekMany(200), Array(200).fill('unavailable'), 'then fails every call');
    t.equal(lines.length, 1, 'one line for 200 failed calls');
    t.match(lines[0], { level: 'warn', msg: /^redis unavailable/, fields: { op: 'peek', err: Error } });

    clock += 9_999;
    await peekMany(50);
    t.equal(lines.length, 1, 'none more within the interval');
    clock += 1;
    await peekMany(50);
    t.equal(lines.length, 2, 'one more once the interval has passed');
    t.match(lines[1], {
      level: 'warn',
      msg: 'redis still unavailable; 249 failed calls not logged since the last line',
      fields: { unlogged: 249, failures: 251, downMs: 10_000 },
    });

    await own.start();
    await eventually(
      async () => (await g.peek('ola', 'r-0')).kind === 'none',
      30_000,
      'Redis to answer again',
    );
    t.equal(lines.length, 3, 'one line when it is back');
    t.match(lines[2], { level: 'info', msg: 'redis answers again' });
    const { failures, unlogged } = lines[2]!.fields as { failures: number; unlogged: number };
    t.ok(failures >= 300, `counting every failed call of the outage (${failures})`);
    t.equal(unlogged, failures - 251, 'and those no line counted yet');
  },
);

t.test(
  "a dispatcher that dies holds its users' slots a lease at most; a living one keeps them",
  async (t) => {
    // Two instances on one Redis, one slot per user, slots leased for 3 s (renewed every second).
    const leased = () => {
      const g = new Guard(
        redis,
        {
          ratePerSec: 100,
          burst: 100,
          userConcurrency: 1,
          cacheTtlSec: 60,
          answerTtlSec: 60,
          slotLeaseMs: 3_000,
        },
        { failed: (op, e) => errors.push(`${op}: ${e.message}`), succeeded: () => undefined },
      );
      t.teardown(() => g.close());
      return g;
    };
    const [a, b] = [leased(), leased()];
    let n = 0;
    const admit = (g: Guard, slotTtlMs = 600_000) =>
      g.admit({ userId: 'lease', requestId: `l-${++n}`, slot: `slot-${n}`, slotTtlMs });

    t.match(await admit(a), { kind: 'go' }, 'a runs a call with a 10-minute timeout');
    t.equal(a.slotsHeld, 1);
    t.match(await admit(b), { kind: 'busy' }, 'the user is at the limit');
    // Past two leases: a has renewed its slot all along.
    await new Promise((resolve) => setTimeout(resolve, 7_000));
    t.match(await admit(b), { kind: 'busy' }, 'a living holder keeps its slot past the lease');

    a.close(); // as if SIGKILLed: it neither renews nor frees its slot
    await eventually(async () => (await admit(b)).kind === 'go', 20_000, 'the dead holder’s slot to lapse');
    t.pass('another instance gets the slot within a lease, not after the call’s timeout');
    t.equal(b.slotsHeld, 1);
    await b.release('lease', `slot-${n}`);
    t.equal(b.slotsHeld, 0, 'a released slot is no longer renewed');

    // One that dies before it ever renewed: its slot was leased, not taken for the call's timeout.
    const d = leased();
    t.match(await admit(d), { kind: 'go' });
    d.close();
    await eventually(async () => (await admit(b)).kind === 'go', 20_000, 'the first lease to lapse');
    t.pass('a slot never renewed lapses within its first lease');
    await b.release('lease', `slot-${n}`);

    // A slot is renewed only up to its own ttl: a call that should have ended lets it lapse.
    const c = leased();
    // Renewed twice or so (every second) before its 2.5 s are up, then no more.
    t.match(await admit(c, 2_500), { kind: 'go' });
    await eventually(async () => (await admit(b)).kind === 'go', 20_000, 'the overdue slot to lapse');
    t.pass('an overdue slot lapses although its holder lives');
    t.same(errors, []);
  },
);

t.test(
  'a slot the set lost while its call runs is taken again; a short slot does not shorten the set',
  async (t) => {
    const leased = (slotLeaseMs: number, userConcurrency = 1, lostSlots?: (count: number) => void) => {
      const g = new Guard(
        redis,
        { ratePerSec: 100, burst: 100, userConcurrency, cacheTtlSec: 60, answerTtlSec: 60, slotLeaseMs },
        { failed: (op, e) => errors.push(`${op}: ${e.message}`), succeeded: () => undefined, lostSlots },
      );
      t.teardown(() => g.close());
      return g;
    };
    const [a, b] = [leased(3_000), leased(3_000)];
    const key = 'tb:{restored}:c';
    t.match(await a.admit({ userId: 'restored', requestId: 'r-a', slot: 'slot-a', slotTtlMs: 600_000 }), {
      kind: 'go',
    });
    // Redis restarted empty (or a renewal was missed past the lease): the running call is uncounted.
    await redis.del(key);
    await eventually(
      async () => (await redis.zscore(key, 'slot-a')) !== null,
      20_000,
      'the slot taken again',
    );
    t.match(
      await b.admit({ userId: 'restored', requestId: 'r-b', slot: 'slot-b', slotTtlMs: 600_000 }),
      { kind: 'busy' },
      'the running call counts again',
    );
    t.equal(a.lostSlots, 0);

    // Lost while another call took the user's only slot: the renewal cannot take it back, and says so.
    const told: number[] = [];
    const c = leased(3_000, 1, (n) => told.push(n));
    const taken = 'tb:{taken}:c';
    t.match(await c.admit({ userId: 'taken', requestId: 'r-c', slot: 'slot-c', slotTtlMs: 600_000 }), {
      kind: 'go',
    });
    await redis
      .multi()
      .del(taken)
      .zadd(taken, String(Date.now() + 60_000), 'another-call')
      .exec();
    await eventually(async () => told.length > 0, 20_000, 'the renewal to find the slot lost');
    t.same(told[0], 1, 'one slot lost, told to the dispatcher (toolbus_slots_lost_total)');
    t.ok(c.lostSlots >= 1);
    t.same(await redis.zrange(taken, '0', '-1'), ['another-call'], 'the other call keeps its slot');

    // Two slots of a user: one leased for 40 s, then one of 1 s. The set lives as long as the first.
    const g = leased(40_000, 2);
    const admit = (id: string, slotTtlMs: number) =>
      g.admit({ userId: 'lengths', requestId: id, slot: id, slotTtlMs });
    t.match(await admit('long', 600_000), { kind: 'go' });
    t.match(await admit('short', 1_000), { kind: 'go' });
    t.ok((await redis.pttl('tb:{lengths}:c')) > 30_000, 'a 1 s slot did not shorten the set to 2 s');
  },
);
