import t from 'tap';
import { backoffMs, retry, sleep } from './retry.ts';

t.test('backoff: the ceiling doubles from minMs up to maxMs; full jitter draws below it', async (t) => {
  const o = { minMs: 1_000, maxMs: 15_000, jitter: 'none' as const };
  t.strictSame(
    [0, 1, 2, 3, 4, 5, 100].map((a) => backoffMs(a, o)),
    [1_000, 2_000, 4_000, 8_000, 15_000, 15_000, 15_000],
  );
  t.equal(backoffMs(2, { ...o, factor: 3 }), 9_000, 'another factor');
  t.equal(backoffMs(3, { minMs: 1_000, maxMs: 15_000, random: () => 0.5 }), 4_000, 'half the ceiling');
  t.equal(backoffMs(3, { minMs: 1_000, maxMs: 15_000, random: () => 0 }), 0, 'full jitter may not wait');
  for (let i = 0; i < 200; i++) {
    const w = backoffMs(10, { minMs: 1_000, maxMs: 15_000 });
    if (w < 0 || w >= 15_000) t.fail(`out of [0, 15000): ${w}`);
  }
  t.equal(backoffMs(10_000, { minMs: 1, maxMs: 10, jitter: 'none' }), 10, 'a huge attempt stays finite');
});

t.test('retry: until it succeeds, at most `retries` times, only what is retryable', async (t) => {
  const fast = { minMs: 1, maxMs: 2 };
  let calls = 0;
  const flaky = async () => {
    if (++calls < 3) throw new Error(`fail ${calls}`);
    return 'done';
  };
  t.equal(await retry(flaky, { ...fast, retries: 5 }), 'done');
  t.equal(calls, 3);

  calls = 0;
  await t.rejects(retry(flaky, { ...fast, retries: 1 }), /fail 2/, 'the last error when retries run out');
  t.equal(calls, 2);

  calls = 0;
  const seen: number[] = [];
  await t.rejects(
    retry(flaky, { ...fast, retries: 5, retryable: (e) => !/fail 1/.test((e as Error).message) }),
    /fail 1/,
    'a non-retryable error at once',
  );
  t.equal(calls, 1);

  calls = 0;
  await retry(flaky, { ...fast, retries: Infinity, onRetry: (_e, attempt) => seen.push(attempt) });
  t.strictSame(seen, [0, 1], 'told of each retry');
});

t.test('retry: a wait hint longer than the backoff wins', async (t) => {
  const waits: number[] = [];
  let calls = 0;
  await retry(
    async () => {
      if (++calls < 2) throw Object.assign(new Error('busy'), { retryAfterMs: 30 });
      return calls;
    },
    {
      minMs: 1,
      maxMs: 2,
      retries: 3,
      waitHintMs: (e) => (e as { retryAfterMs?: number }).retryAfterMs,
      onRetry: (_e, _a, w) => waits.push(w),
    },
  );
  t.strictSame(waits, [30]);
});

t.test('retry and sleep stop when the signal aborts', async (t) => {
  const ac = new AbortController();
  let calls = 0;
  const pending = retry(
    async () => {
      calls++;
      if (calls === 2) ac.abort(new Error('stopped'));
      throw new Error('always');
    },
    { minMs: 1, maxMs: 1, retries: Infinity, signal: ac.signal },
  );
  await t.rejects(pending, /stopped/);
  t.equal(calls, 2, 'no attempt after the abort');
  const aborted = AbortSignal.abort(new Error('gone'));
  await t.rejects(sleep(60_000, aborted), /gone/, 'an aborted sleep does not wait');
  const ac2 = new AbortController();
  const s = sleep(60_000, ac2.signal);
  ac2.abort(new Error('later'));
  await t.rejects(s, /later/);
});
