/**
 * Latency distributions as fixed, log-spaced histogram buckets, so that distributions of any
 * number of rows (minutes, tools) merge by adding counts and still answer p50, p95 and p99.
 *
 * Bucket 0 holds durations up to 1 ms; bucket i (1..LAST_BOUNDED) holds durations in
 * (2^((i-1)/4), 2^(i/4)] ms; the last bucket holds everything above 2^(LAST_BOUNDED/4) ms
 * (about 9.3 hours). Neighbouring bounds differ by a factor of 2^(1/4) ≈ 1.19, so an estimate
 * interpolated inside a bucket is within 19 % of the true value.
 */
export const BUCKETS_PER_DOUBLING = 4;
const LAST_BOUNDED = 25 * BUCKETS_PER_DOUBLING;

/** Upper bound (inclusive, ms) of each bounded bucket; the overflow bucket has none. */
export const LATENCY_BOUNDS_MS: readonly number[] = Array.from(
  { length: LAST_BOUNDED + 1 },
  (_, i) => 2 ** (i / BUCKETS_PER_DOUBLING),
);
/** Bounded buckets plus the overflow bucket. */
export const LATENCY_BUCKETS = LATENCY_BOUNDS_MS.length + 1;

export const emptyHistogram = (): number[] => new Array<number>(LATENCY_BUCKETS).fill(0);

/** The bucket a duration falls in. Negative or non-finite durations are refused. */
export function bucketOf(durationMs: number): number {
  if (!Number.isFinite(durationMs) || durationMs < 0) throw new RangeError(`invalid duration ${durationMs}`);
  if (durationMs <= 1) return 0;
  // log2 can round a value that sits exactly on a bound to either side: correct against the table.
  let i = Math.ceil(Math.log2(durationMs) * BUCKETS_PER_DOUBLING);
  if (i > LAST_BOUNDED) return LAST_BOUNDED + 1;
  while (i > 0 && durationMs <= LATENCY_BOUNDS_MS[i - 1]!) i--;
  while (i <= LAST_BOUNDED && durationMs > LATENCY_BOUNDS_MS[i]!) i++;
  return i;
}

/** Adds `b` into a copy of `a` (both full-length histograms). */
export function mergeHistograms(a: readonly number[], b: readonly number[]): number[] {
  const out = emptyHistogram();
  for (let i = 0; i < LATENCY_BUCKETS; i++) out[i] = (a[i] ?? 0) + (b[i] ?? 0);
  return out;
}

/**
 * The q-quantile (0 < q <= 1) of the recorded durations, interpolated linearly inside its bucket
 * and never above the largest duration recorded (`maxMs`). Null when nothing was recorded.
 */
export function quantile(histogram: readonly number[], q: number, maxMs: number | null): number | null {
  if (!(q > 0 && q <= 1)) throw new RangeError(`quantile must be in (0, 1], got ${q}`);
  const total = histogram.reduce((s, n) => s + n, 0);
  if (total === 0) return null;
  const rank = Math.ceil(q * total);
  let seen = 0;
  for (let i = 0; i < histogram.length; i++) {
    const n = histogram[i] ?? 0;
    if (n === 0) continue;
    if (seen + n >= rank) {
      const lower = i === 0 ? 0 : LATENCY_BOUNDS_MS[i - 1]!;
      const upper = i < LATENCY_BOUNDS_MS.length ? LATENCY_BOUNDS_MS[i]! : (maxMs ?? lower);
      const estimate = lower + ((upper - lower) * (rank - seen)) / n;
      return maxMs === null ? estimate : Math.min(estimate, maxMs);
    }
    seen += n;
  }
  return maxMs;
}
