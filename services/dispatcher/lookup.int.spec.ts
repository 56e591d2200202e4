import t from 'tap';
import { headers } from '@nats-io/transport-node';
import { AnswersReply, subjects, type TerminalAnswer } from '../../contracts/index.ts';
import { createTokenVerifier, signToken } from '../../lib/auth.ts';
import { createLogger } from '../../lib/log.ts';
import { connectionIdentity, connectNats } from '../../lib/nats.ts';
import { startNats } from '../../test/support/processes.ts';
import { serveAnswers, type LookupLimits, type LookupResult } from './lookup.ts';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

const SECRET = 'l'.repeat(40);

/** A store lookup the test finishes when it wants: counts the calls. */
function heldLookups() {
  const calls: Array<{ requestId: string; finish: (a: TerminalAnswer | null) => void }> = [];
  const waiters: Array<() => void> = [];
  return {
    calls,
    lookup: (_userId: string, requestId: string) =>
      new Promise<TerminalAnswer | null>((resolve) => {
        calls.push({ requestId, finish: resolve });
        waiters.splice(0).forEach((w) => w());
      }),
    /** The lookup of `requestId`. */
    of(requestId: string) {
      const call = calls.find((c) => c.requestId === requestId);
      if (!call) throw new Error(`no lookup of ${requestId} has started`);
      return call;
    },
    /** Resolves once `n` lookups have started. */
    async started(n: number) {
      while (calls.length < n) await new Promise<void>((r) => waiters.push(r));
    },
  };
}

const completed = (requestId: string): TerminalAnswer => ({
  status: 'completed',
  requestId,
  executionId: 'e',
  correlationId: 'c',
  result: 1,
  durationMs: 1,
  cached: false,
});

t.test(
  'answer lookups are bounded: over the bound or past the deadline, OVERLOADED with a retry hint',
  async (t) => {
    const nats = await startNats(t);
    const nc = await connectNats(nats.url, 'lookup-test');
    t.teardown(() => nc.close());
    const verifier = createTokenVerifier({ secret: SECRET, maxLifetimeS: 86_400, clockToleranceS: 5 });
    const auth = headers();
    auth.set('Authorization', `Bearer ${await signToken(SECRET, { sub: 'alice' })}`);
    const ask = async (requestId: string): Promise<AnswersReply> => {
      const reply = await nc.request(
        subjects.answers('alice', connectionIdentity(nc)),
        JSON.stringify({ requestId }),
        {
          headers: auth,
          timeout: 30_000,
        },
      );
      return AnswersReply.parse(reply.json());
    };
    const results: LookupResult[] = [];
    const metrics = {
      lookups: { inc: ({ result }: { result: LookupResult }) => void results.push(result) },
      lookupsInFlight: { inc() {}, dec() {} },
    };
    const log = createLogger('lookup-test', 'silent');
    /** The answers service over `held`'s lookups, with these limits, stopped at the test's end. */
    const serve = (tt: Tap, held: ReturnType<typeof heldLookups>, limits: LookupLimits) => {
      const service = serveAnswers({ nc, verifier, lookup: held.lookup, log, limits, metrics });
      tt.teardown(() => service.stop());
      return service;
    };

    t.test('beyond the bound: refused at once, before any lookup starts', async (t) => {
      const held = heldLookups();
      serve(t, held, {
        maxInFlight: 2,
        maxWaiting: 0,
        deadlineMs: 600_000,
        retryAfterMs: 1_500,
      });
      results.length = 0;
      const first = ask('r-1');
      const second = ask('r-2');
      await held.started(2);
      t.strictSame(await ask('r-3'), { answer: null, overloaded: { retryAfterMs: 1_500 } });
      t.equal(held.calls.length, 2, 'the third lookup did no store work');
      // The two lookups start in either order (each waits on its token check first).
      held.of('r-1').finish(completed('r-1'));
      held.of('r-2').finish(null);
      t.strictSame(await first, { answer: completed('r-1') });
      t.strictSame(await second, { answer: null }, 'no terminal answer yet');
      const fourth = ask('r-4');
      await held.started(3);
      held.of('r-4').finish(completed('r-4'));
      t.strictSame(await fourth, { answer: completed('r-4') }, 'served again once slots are free');
      t.strictSame(results.sort(), ['answered', 'answered', 'overloaded', 'pending']);
    });

    t.test('with every slot taken, what is known without the store is still answered', async (t) => {
      const held = heldLookups();
      // Redis knows r-known's answer and that r-shed was shed; of anything else only the store knows.
      const known = async (_userId: string, requestId: string) =>
        requestId === 'r-known' ? completed('r-known') : requestId === 'r-shed' ? { shed: 2 } : undefined;
      const service = serveAnswers({
        nc,
        verifier,
        lookup: held.lookup,
        known,
        log,
        limits: { maxInFlight: 1, maxWaiting: 0, deadlineMs: 600_000, retryAfterMs: 1_500 },
        metrics,
      });
      t.teardown(() => service.stop());
      results.length = 0;
      const slow = ask('r-slow');
      await held.started(1);
      t.strictSame(await ask('r-known'), { answer: completed('r-known') }, 'an answer Redis remembers');
      t.strictSame(await ask('r-shed'), { answer: null, shed: 2 }, 'a shedding Redis counted');
      t.strictSame(
        await ask('r-other'),
        { answer: null, overloaded: { retryAfterMs: 1_500 } },
        'what needs the store waits for a slot: none, OVERLOADED',
      );
      t.equal(held.calls.length, 1, 'no store work beyond the slot');
      held.of('r-slow').finish(null);
      t.strictSame(await slow, { answer: null });
      t.strictSame(results.sort(), ['answered', 'overloaded', 'pending', 'shed']);
    });

    t.test('past the deadline: OVERLOADED, and the slow lookup keeps its slot until it ends', async (t) => {
      const held = heldLookups();
      const service = serve(t, held, { maxInFlight: 1, maxWaiting: 0, deadlineMs: 50 });
      results.length = 0;
      t.strictSame(
        await ask('r-5'),
        { answer: null, overloaded: { retryAfterMs: 50 } },
        'hint: the deadline',
      );
      t.equal(service.inFlight, 1, 'its store work still runs');
      t.strictSame(
        await ask('r-6'),
        { answer: null, overloaded: { retryAfterMs: 50 } },
        'and holds the only slot',
      );
      t.equal(held.calls.length, 1);
      held.of('r-5').finish(null);
      while (service.inFlight > 0) await new Promise((r) => setImmediate(r));
      const next = ask('r-7');
      await held.started(2);
      held.of('r-7').finish(completed('r-7'));
      t.strictSame(await next, { answer: completed('r-7') });
      t.strictSame(results, ['deadline', 'overloaded', 'answered']);
    });

    t.test(
      'with every slot taken, lookups wait in order for one, a few of them, until their deadline',
      async (t) => {
        const held = heldLookups();
        const service = serve(t, held, { maxInFlight: 1, maxWaiting: 2, deadlineMs: 600_000 });
        results.length = 0;
        const first = ask('q-1');
        await held.started(1);
        // Sent together, as a burst is read from the connection: two wait, the third is refused.
        const [second, third] = [ask('q-2'), ask('q-3')];
        const fourth = ask('q-4');
        t.strictSame(
          await fourth,
          { answer: null, overloaded: { retryAfterMs: 600_000 } },
          'no room to wait',
        );
        t.equal(held.calls.length, 1, 'one slot: the others do no store work yet');
        held.of('q-1').finish(completed('q-1'));
        t.strictSame(await first, { answer: completed('q-1') });
        await held.started(2);
        t.equal(held.calls[1]?.requestId, 'q-2', 'the oldest waiting lookup gets the slot');
        held.of('q-2').finish(completed('q-2'));
        await held.started(3);
        held.of('q-3').finish(null);
        t.strictSame(await second, { answer: completed('q-2') });
        t.strictSame(await third, { answer: null });
        t.equal(service.inFlight, 0, 'every slot given back');
        t.strictSame(results, ['overloaded', 'answered', 'answered', 'pending']);
      },
    );

    t.test('a lookup that waits past its deadline is answered OVERLOADED', async (t) => {
      const held = heldLookups();
      const service = serve(t, held, { maxInFlight: 1, maxWaiting: 4, deadlineMs: 300 });
      const slow = ask('w-1');
      await held.started(1);
      t.strictSame(await ask('w-2'), { answer: null, overloaded: { retryAfterMs: 300 } });
      t.equal(held.calls.length, 1, 'it never ran');
      held.of('w-1').finish(null);
      await slow;
      while (service.inFlight > 0) await new Promise((r) => setImmediate(r));
      const next = ask('w-3');
      await held.started(2);
      held.of('w-3').finish(completed('w-3'));
      t.strictSame(await next, { answer: completed('w-3') }, 'the slot was not lost to the one that gave up');
    });

    t.test('refusals of the asker are answers; a body without a request id is MALFORMED', async (t) => {
      const held = heldLookups();
      const service = serveAnswers({
        nc,
        verifier,
        lookup: held.lookup,
        log,
        limits: { maxInFlight: 4, deadlineMs: 600_000 },
      });
      t.teardown(() => service.stop());
      const reply = await nc.request(subjects.answers('alice', connectionIdentity(nc)), 'not json', {
        headers: auth,
        timeout: 30_000,
      });
      t.match(AnswersReply.parse(reply.json()), {
        answer: { status: 'failed', error: { code: 'MALFORMED' } },
      });
      const other = await nc.request(
        subjects.answers('bob', connectionIdentity(nc)),
        JSON.stringify({ requestId: 'r-8' }),
        {
          headers: auth,
          timeout: 30_000,
        },
      );
      t.match(AnswersReply.parse(other.json()), { answer: { error: { code: 'FORBIDDEN' } } });
      t.equal(held.calls.length, 0, 'no store work for either');
    });
  },
);
