/**
 * The per-user rate limit judges a request by when its agent sent it (JetStream's timestamp), so
 * that a backlog admitted in one burst after an outage is not turned into refusals.
 */
import t from 'tap';
import { createRedis } from '../../lib/redis.ts';
import { startRedis } from '../../test/support/processes.ts';
import { Guard } from './guard.ts';

const server = await startRedis(t);
const redis = createRedis(server.url);
t.teardown(() => redis.quit());
// The client queues nothing while it connects: wait until it is ready.
if (redis.status !== 'ready') await new Promise((resolve) => redis.once('ready', resolve));
const errors: string[] = [];
const guard = new Guard(
  redis,
  { ratePerSec: 2, burst: 2, userConcurrency: 1000, cacheTtlSec: 60, answerTtlSec: 60 },
  (op, e) => errors.push(`${op}: ${e.message}`),
);

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

t.test('a request sent earlier than the last one judged gets no refill from the past', async (t) => {
  const now = Date.now();
  const kinds = await admitAll('late', [now - 1_000, now - 1_000, now - 20_000, now - 20_000]);
  t.same(kinds, ['go', 'go', 'rate_limited', 'rate_limited']);
});
