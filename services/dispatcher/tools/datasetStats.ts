import { z } from 'zod';
import { defineTool } from '../../../lib/tools/index.ts';

/**
 * Descriptive statistics per numeric column. Data comes column-wise (`columns`) or row-wise
 * (`rows`). `null` (and, for rows, a missing key) counts as missing and is left out of every
 * statistic. JSON has no NaN or Infinity, so those cannot arrive.
 *
 * mean: arithmetic mean. stddev: sample standard deviation (n - 1 in the denominator, Welford's
 * algorithm), null when fewer than 2 values. Percentiles: linear interpolation between closest
 * ranks (Hyndman-Fan type 7, the default of NumPy, R and Excel PERCENTILE.INC): for sorted values
 * x[0..n-1] and p in [0, 1], h = (n - 1) * p, result = x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]).
 */

export const MAX_VALUES = 1_000_000;
const Cell = z.number().nullable();
const ColumnName = z.string().min(1).max(128);

const Input = z
  .object({
    columns: z.record(ColumnName, z.array(Cell)).optional(),
    rows: z.array(z.record(ColumnName, Cell)).optional(),
  })
  .refine(
    (v) => (v.columns === undefined) !== (v.rows === undefined),
    'give exactly one of `columns` or `rows`',
  )
  .refine(
    (v) =>
      Object.keys(v.columns ?? {}).length <= 1000 &&
      (v.rows ?? []).every((r) => Object.keys(r).length <= 1000),
    'at most 1000 columns',
  )
  .refine((v) => countValues(v) <= MAX_VALUES, `at most ${MAX_VALUES} values`);

function countValues(v: {
  columns?: Record<string, unknown[]> | undefined;
  rows?: Array<Record<string, unknown>> | undefined;
}) {
  let n = 0;
  for (const c of Object.values(v.columns ?? {})) n += c.length;
  for (const r of v.rows ?? []) n += Object.keys(r).length;
  return n;
}

const Stats = z.object({
  count: z.number().int(),
  missing: z.number().int(),
  mean: z.number().nullable(),
  stddev: z.number().nullable(),
  min: z.number().nullable(),
  max: z.number().nullable(),
  p50: z.number().nullable(),
  p90: z.number().nullable(),
  p99: z.number().nullable(),
});
export type ColumnStats = z.infer<typeof Stats>;

const Output = z.object({
  rowCount: z.number().int(),
  columns: z.record(z.string(), Stats),
});
export type DatasetStats = z.infer<typeof Output>;

/** Type-7 percentile of ascending `sorted` (non-empty), p in [0, 1]. */
export function percentile(sorted: readonly number[], p: number): number {
  const h = (sorted.length - 1) * p;
  const lo = Math.floor(h);
  const a = sorted[lo]!;
  const b = sorted[Math.min(lo + 1, sorted.length - 1)]!;
  return a + (h - lo) * (b - a);
}

export function columnStats(cells: ReadonlyArray<number | null | undefined>): ColumnStats {
  const values: number[] = [];
  let missing = 0;
  for (const c of cells) {
    if (typeof c === 'number' && Number.isFinite(c)) values.push(c);
    else missing++;
  }
  const n = values.length;
  if (n === 0)
    return {
      count: 0,
      missing,
      mean: null,
      stddev: null,
      min: null,
      max: null,
      p50: null,
      p90: null,
      p99: null,
    };
  // Welford: numerically stable single pass.
  let mean = 0;
  let m2 = 0;
  for (let i = 0; i < n; i++) {
    const x = values[i]!;
    const delta = x - mean;
    mean += delta / (i + 1);
    m2 += delta * (x - mean);
  }
  const sorted = Float64Array.from(values).sort();
  const asArray = Array.from(sorted);
  return {
    count: n,
    missing,
    mean,
    stddev: n >= 2 ? Math.sqrt(m2 / (n - 1)) : null,
    min: asArray[0]!,
    max: asArray[n - 1]!,
    p50: percentile(asArray, 0.5),
    p90: percentile(asArray, 0.9),
    p99: percentile(asArray, 0.99),
  };
}

export function datasetStats(input: {
  columns?: Record<string, Array<number | null>> | undefined;
  rows?: Array<Record<string, number | null>> | undefined;
}): DatasetStats {
  if (input.columns) {
    const columns = input.columns;
    const names = Object.keys(columns).sort();
    return {
      rowCount: names.reduce((n, k) => Math.max(n, columns[k]!.length), 0),
      columns: Object.fromEntries(names.map((name) => [name, columnStats(columns[name]!)])),
    };
  }
  const rows = input.rows ?? [];
  const names = [...new Set(rows.flatMap((r) => Object.keys(r)))].sort();
  return {
    rowCount: rows.length,
    columns: Object.fromEntries(names.map((name) => [name, columnStats(rows.map((r) => r[name]))])),
  };
}

export const datasetStatsTool = defineTool({
  name: 'dataset_stats',
  version: '1.0.0',
  description:
    'Descriptive statistics per numeric column: count, missing, mean, sample standard deviation, min, max and the ' +
    '50th/90th/99th percentiles (linear interpolation, type 7). Nulls count as missing.',
  input: Input,
  output: Output,
  timeoutMs: 30_000,
  idempotent: true,
  cacheable: true,
  annotations: {
    title: 'Dataset statistics',
    readOnlyHint: true,
    destructiveHint: false,
    idempotentHint: true,
    openWorldHint: false,
  },
  async run(args) {
    return datasetStats(args);
  },
});
