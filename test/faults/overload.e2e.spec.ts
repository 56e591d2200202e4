import t from 'tap';
import { checkNothingLost } from './checker.ts';
import { sleep, startFaultStack, waitHealthy } from './harness.ts';
import { Ledger, send, type RequestSpec } from './load.ts';
import { makeUsers } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Fault 8: three times the load the system is set to sustain. Each user may run 5 requests a
 * second (burst 5) and 2 at a time; each offers 15 a second, open loop (new requests do not wait
 * for answers), for 8 s. The excess must be refused with RATE_LIMITED (recorded, and answered
 * with when to retry), nothing may crash, everything acknowledged must be in the store, and once
 * the load drops every user is served normally again.
 */

const RATE = 5;
const BURST = 5;
const OFFERED = 15;
const SECONDS = 8;

t.test('three times the sustainable load: refused cleanly, nothing lost, service recovers', async (t) => {
  const fs = await startFaultStack(t, {
    env: {
      RATE_LIMIT_PER_SEC: String(RATE),
      RATE_LIMIT_BURST: String(BURST),
      USER_CONCURRENCY: '2',
      DISPATCH_CONCURRENCY: '16',
    },
  });
  const users = await makeUsers(fs, 'ov', 4);
  const watchers = startWatchers(fs.url('notifier'), users);
  t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
  const ledger = new Ledger();

  const mix = (i: number): RequestSpec =>
    i % 4 === 0
      ? { tool: 'sleep_idempotent', args: { ms: 300 } }
      : { tool: i % 2 ? 'echo' : 'noop', args: { i } };
  const started = Date.now();
  const inFlight: Array<Promise<unknown>> = [];
  for (let tick = 0; tick < OFFERED * SECONDS; tick++) {
    for (const user of users) {
      inFlight.push(
        send(fs.agent, ledger, user, `ov-${user.userId}-${tick}`, mix(tick), { attemptTimeoutMs: 30_000 }),
      );
    }
    await sleep(1_000 / OFFERED);
  }
  const offeredFor = (Date.now() - started) / 1_000;
  await Promise.all(inFlight);
  t.comment(
    `offered ${inFlight.length} requests in ${offeredFor.toFixed(1)} s; answers ${JSON.stringify(ledger.summary())}`,
  );

  for (const user of users) {
    const mine = ledger.ofUser(user.userId);
    const completed = mine.filter((e) => e.answers[0]?.status === 'completed').length;
    const limited = mine.flatMap((e) => {
      const a = e.answers[0];
      return a?.status === 'failed' && a.error.code === 'RATE_LIMITED' ? [a] : [];
    });
    const allowed = BURST + RATE * (offeredFor + 2);
    t.ok(
      completed <= allowed,
      `${user.userId}: ${completed} completed, at most the ${allowed.toFixed(0)} the limits allow`,
    );
    t.ok(
      limited.length >= mine.length / 3,
      `${user.userId}: ${limited.length} of ${mine.length} refused RATE_LIMITED`,
    );
    t.ok(
      limited.every(
        (a) =>
          (a.error.details?.['limit'] === 'rate' && Number(a.error.details['retryAfterMs']) > 0) ||
          a.error.details?.['limit'] === 'concurrency',
      ),
      `${user.userId}: each refusal says which limit and, for the rate, when to retry`,
    );
    const other = mine.filter((e) => {
      const a = e.answers[0];
      return !a || (a.status === 'failed' && a.error.code !== 'RATE_LIMITED');
    });
    t.strictSame(
      other.map((e) => e.requestId),
      [],
      `${user.userId}: nothing else went wrong`,
    );
  }

  t.strictSame(fs.unexpectedExits(), [], 'no service process crashed');
  await waitHealthy(fs, ['dispatcher', 'projector', 'notifier']);

  // The load drops: after the buckets refill, everyone is served as usual.
  await sleep(2_000);
  for (const user of users) {
    for (let i = 0; i < 3; i++) {
      const a = await send(fs.agent, ledger, user, `calm-${user.userId}-${i}`, { tool: 'echo', args: { i } });
      t.match(
        a,
        { status: 'completed', result: { i } },
        `${user.userId} is served after the load dropped (${i + 1})`,
      );
      await sleep(1_000 / RATE);
    }
  }

  await checkNothingLost(t, { store: fs.store, pool: fs.pool, ledger, watchers });
});
