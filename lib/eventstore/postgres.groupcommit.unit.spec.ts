import { randomUUID } from 'node:crypto';
import t from 'tap';
import { GroupCommitter, type PendingAppend } from './postgres.groupcommit.ts';
import type { EventData } from './types.ts';

const events = (n: number): EventData[] =>
  Array.from({ length: n }, () => ({ id: randomUUID(), type: 'T', data: {}, metadata: {} }));

/** A committer whose commits end only when the test says so; it records every batch. */
function harness(options: ConstructorParameters<typeof GroupCommitter>[1] = {}) {
  const batches: string[][] = [];
  const open: Array<() => void> = [];
  const committer = new GroupCommitter((batch: PendingAppend[]) => {
    batches.push(batch.map((p) => p.stream));
    return new Promise<void>((resolve) => {
      open.push(() => {
        batch.forEach((p) => p.resolve({ nextRevision: 0, position: null, written: true }));
        resolve();
      });
    });
  }, options);
  const turn = () => new Promise((resolve) => setImmediate(resolve));
  /** Ends the oldest commit still open. */
  const finish = async () => {
    open.shift()!();
    await turn();
  };
  return { committer, batches, open, turn, finish };
}

t.test('appends of one turn go together; the next ones gather while the commits are in flight', async (t) => {
  const h = harness({ maxInFlight: 1 });
  const first = ['a', 'b', 'c'].map((s) => h.committer.append(s, events(1), 'any'));
  await h.turn();
  t.strictSame(h.batches, [['a', 'b', 'c']], 'one batch for the turn');
  const later = ['d', 'e'].map((s) => h.committer.append(s, events(1), 'any'));
  await h.turn();
  t.equal(h.batches.length, 1, 'nothing goes while the one commit allowed is in flight');
  await h.finish();
  await Promise.all(first);
  t.strictSame(h.batches[1], ['d', 'e'], 'what gathered goes when it ends');
  await h.finish();
  await Promise.all(later);
});

t.test('a stream goes once per batch; the second append waits for the next', async (t) => {
  const h = harness({ maxInFlight: 1 });
  const all = ['a', 'b', 'a', 'c', 'a'].map((s) => h.committer.append(s, events(1), 'any'));
  await h.turn();
  await h.finish();
  await h.finish();
  await h.finish();
  await Promise.all(all);
  t.strictSame(h.batches, [['a', 'b', 'c'], ['a'], ['a']], 'in arrival order');
});

t.test('limits: appends and events per batch; a long append goes alone', async (t) => {
  const h = harness({ maxInFlight: 1, maxAppends: 2, maxEvents: 5 });
  const all = [
    h.committer.append('a', events(1), 'any'),
    h.committer.append('b', events(1), 'any'),
    h.committer.append('c', events(1), 'any'),
    h.committer.append('long', events(9), 'any'),
    h.committer.append('d', events(3), 'any'),
    h.committer.append('e', events(3), 'any'),
  ];
  await h.turn();
  while (h.open.length > 0) await h.finish();
  await Promise.all(all);
  t.strictSame(
    h.batches,
    [['a', 'b'], ['c', 'd'], ['long'], ['e']],
    'each within the limits, in arrival order',
  );
});

t.test('up to maxInFlight batches commit at once; drain waits for them', async (t) => {
  const h = harness({ maxInFlight: 2 });
  void h.committer.append('a', events(1), 'any');
  await h.turn();
  void h.committer.append('b', events(1), 'any');
  await h.turn();
  void h.committer.append('c', events(1), 'any');
  await h.turn();
  t.strictSame(h.batches, [['a'], ['b']], 'two in flight, the third waits');
  let drained = false;
  const draining = h.committer.drain().then(() => (drained = true));
  await h.finish();
  t.strictSame(h.batches[2], ['c'], 'the third goes when one ends');
  t.notOk(drained, 'not drained while commits are open');
  await h.finish();
  await h.finish();
  await draining;
  t.ok(drained, 'drained once all ended');
});

t.test('a commit that throws rejects its appends; the next batch still goes', async (t) => {
  let calls = 0;
  const committer = new GroupCommitter(async (batch) => {
    if (calls++ === 0) throw new Error('lost connection');
    batch.forEach((p) => p.resolve({ nextRevision: 0, position: null, written: true }));
  });
  const failed = committer.append('a', events(1), 'any');
  await t.rejects(failed, /lost connection/, 'the batch failed');
  t.ok((await committer.append('b', events(1), 'any')).written, 'the next one commits');
});
