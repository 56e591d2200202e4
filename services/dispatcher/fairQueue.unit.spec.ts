import fc from 'fast-check';
import t from 'tap';
import { FairQueue } from './fairQueue.ts';

/** Starts what the queue picks until it picks nothing; returns the users in start order. */
const startAll = (q: FairQueue<string>, limit = Infinity): string[] => {
  const order: string[] = [];
  while (order.length < limit) {
    const n = q.next();
    if (!n) break;
    q.begin(n.user);
    order.push(n.user);
  }
  return order;
};

t.test('a user arriving behind a flood is next', async (t) => {
  const q = new FairQueue<string>(3);
  for (let i = 0; i < 1000; i++) q.push('flood', `f${i}`);
  t.strictSame(startAll(q, 2), ['flood', 'flood']);
  q.push('single', 's0');
  t.strictSame(q.next(), { user: 'single', item: 's0' }, 'the newcomer (nothing running) goes first');
});

t.test('a user never holds more than its slots; the others wait for it', async (t) => {
  const q = new FairQueue<string>(2);
  for (let i = 0; i < 5; i++) q.push('a', `a${i}`);
  t.strictSame(startAll(q), ['a', 'a']);
  t.equal(q.next(), undefined, 'a is at its slots');
  t.notOk(q.hasEligible());
  t.equal(q.size, 3);
  q.done('a');
  t.ok(q.hasEligible());
  t.strictSame(q.next(), { user: 'a', item: 'a2' }, 'first in, first out within a user');
});

t.test('round robin between users with the same load', async (t) => {
  const q = new FairQueue<string>(100);
  for (let i = 0; i < 3; i++) for (const u of ['a', 'b', 'c']) q.push(u, `${u}${i}`);
  t.strictSame(startAll(q), ['a', 'b', 'c', 'a', 'b', 'c', 'a', 'b', 'c']);
});

t.test('the fewest running goes first', async (t) => {
  const q = new FairQueue<string>(10);
  for (let i = 0; i < 4; i++) q.push('a', `a${i}`);
  t.strictSame(startAll(q, 3), ['a', 'a', 'a']);
  q.push('b', 'b0');
  q.push('b', 'b1');
  q.push('c', 'c0');
  t.strictSame(startAll(q), ['b', 'c', 'b', 'a'], 'b and c (nothing running) before a (three running)');
});

t.test('take removes one waiting item of a user; drain empties the queue', async (t) => {
  const q = new FairQueue<string>(1);
  q.push('a', 'a0');
  q.push('a', 'a1');
  q.push('b', 'b0');
  t.equal(
    q.take('a', (x) => x === 'a1'),
    'a1',
  );
  t.equal(
    q.take('a', (x) => x === 'nope'),
    undefined,
  );
  t.equal(
    q.take('zzz', () => true),
    undefined,
  );
  t.equal(q.size, 2);
  t.strictSame([...q.items()].sort(), ['a0', 'b0']);
  t.strictSame(q.drain().sort(), ['a0', 'b0']);
  t.equal(q.size, 0);
  t.equal(q.users, 0);
  t.equal(q.next(), undefined);
});

t.test('refuses a slot count below one', async (t) => {
  t.throws(() => new FairQueue(0));
  t.throws(() => new FairQueue(1.5));
});

t.test('property: slots hold, nothing is lost, each user is served in order', async (t) => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant('push' as const), user: fc.constantFrom('a', 'b', 'c', 'd') }),
    fc.record({ kind: fc.constant('start' as const) }),
    fc.record({ kind: fc.constant('finish' as const), pick: fc.nat() }),
  );
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 4 }), fc.array(op, { maxLength: 200 }), (slots, ops) => {
      const q = new FairQueue<number>(slots);
      const running: Array<{ user: string; item: number }> = [];
      const pushed = new Map<string, number[]>();
      const started = new Map<string, number[]>();
      let n = 0;
      for (const o of ops) {
        if (o.kind === 'push') {
          q.push(o.user, n);
          pushed.set(o.user, [...(pushed.get(o.user) ?? []), n++]);
        } else if (o.kind === 'start') {
          const next = q.next();
          if (!next) {
            // Nothing may start: every waiting user is at its slots.
            for (const u of pushed.keys()) {
              const waiting = (pushed.get(u)?.length ?? 0) - (started.get(u)?.length ?? 0);
              if (waiting > 0 && q.runningOf(u) < slots) return false;
            }
            continue;
          }
          q.begin(next.user);
          running.push(next);
          started.set(next.user, [...(started.get(next.user) ?? []), next.item]);
          if (q.runningOf(next.user) > slots) return false;
        } else if (running.length > 0) {
          const [done] = running.splice(o.pick % running.length, 1);
          q.done(done!.user);
        }
      }
      // Per user, items start in the order they were pushed.
      for (const [u, items] of started) {
        if (JSON.stringify(items) !== JSON.stringify(pushed.get(u)!.slice(0, items.length))) return false;
      }
      const waiting = [...pushed.values()].flat().length - [...started.values()].flat().length;
      return q.size === waiting;
    }),
    { numRuns: 300 },
  );
  t.pass('the properties hold');
});
