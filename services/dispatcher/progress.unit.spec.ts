import t from 'tap';
import { createProgressReporter, type ProgressUpdate } from './progress.ts';

t.test('only increasing fractions, clamped, messages clipped', async (t) => {
  const sent: ProgressUpdate[] = [];
  const r = createProgressReporter((p) => sent.push(p), 0);
  r.report({ fraction: 0.2 });
  r.report({ fraction: 0.1 });
  r.report({ fraction: 0.2 });
  r.report({ fraction: Number.NaN });
  r.report({ fraction: 0.5, message: 'x'.repeat(600) });
  r.report({ fraction: 7 });
  r.report({ fraction: 1 });
  t.strictSame(
    sent.map((p) => p.fraction),
    [0.2, 0.5, 1],
  );
  t.equal(sent[1]!.message!.length, 500);
  r.stop();
});

t.test('rate limited: the newest update in an interval is sent when it ends', async (t) => {
  let now = 0;
  const sent: number[] = [];
  const r = createProgressReporter(
    (p) => sent.push(p.fraction),
    100,
    () => now,
  );
  r.report({ fraction: 0.1 });
  now = 10;
  r.report({ fraction: 0.2 });
  r.report({ fraction: 0.3 });
  t.strictSame(sent, [0.1], 'the first goes at once, the next wait');
  now = 120;
  await new Promise((resolve) => setTimeout(resolve, 150));
  t.strictSame(sent, [0.1, 0.3], 'the newest held-back one is sent, the one it replaced is not');
  now = 400;
  r.report({ fraction: 1 });
  t.strictSame(sent, [0.1, 0.3, 1], 'after a quiet interval, at once');
  r.stop();
});

t.test('nothing is sent after stop', async (t) => {
  let now = 0;
  const sent: number[] = [];
  const r = createProgressReporter(
    (p) => sent.push(p.fraction),
    100,
    () => now,
  );
  r.report({ fraction: 0.1 });
  now = 5;
  r.report({ fraction: 0.9 });
  r.stop();
  await new Promise((resolve) => setTimeout(resolve, 150));
  r.report({ fraction: 1 });
  t.strictSame(sent, [0.1]);
});

t.test('stop(true): the update held back is sent first, then nothing more', async (t) => {
  let now = 0;
  const sent: number[] = [];
  const r = createProgressReporter(
    (p) => sent.push(p.fraction),
    100,
    () => now,
  );
  r.report({ fraction: 0.5 });
  now = 5;
  r.report({ fraction: 1 });
  t.strictSame(sent, [0.5]);
  r.stop(true);
  t.strictSame(sent, [0.5, 1], 'the final 1.0 is not lost to the rate limit');
  r.stop(true);
  r.report({ fraction: 1 });
  await new Promise((resolve) => setTimeout(resolve, 150));
  t.strictSame(sent, [0.5, 1]);
});

t.test('a failing sender does not throw into the tool', async (t) => {
  const r = createProgressReporter(() => {
    throw new Error('boom');
  }, 0);
  t.doesNotThrow(() => r.report({ fraction: 0.5 }));
  r.stop();
});
