import t from 'tap';
import { ToolInputError, ToolRegistry, type ToolContext } from '../../../lib/tools/index.ts';
import { columnStats, datasetStats, datasetStatsTool, percentile } from './datasetStats.ts';

const ctx = (): ToolContext => ({
  signal: new AbortController().signal,
  userId: 'u1',
  roles: [],
  executionId: '00000000-0000-5000-8000-000000000000',
  requestId: 'r1',
  correlationId: 'c1',
  progress: () => undefined,
});

const near = (actual: number | null | undefined, expected: number) =>
  typeof actual === 'number' && Math.abs(actual - expected) < 1e-9;

t.test('hand-computed statistics of one column', async (t) => {
  // 2 4 4 4 5 5 7 9: mean 5, sum of squares 32, sample variance 32/7.
  const s = columnStats([2, 4, 4, 4, 5, 5, 7, 9]);
  t.equal(s.count, 8);
  t.equal(s.missing, 0);
  t.equal(s.mean, 5);
  t.ok(near(s.stddev, Math.sqrt(32 / 7)), 'stddev (n - 1)');
  t.equal(s.min, 2);
  t.equal(s.max, 9);
  // type 7: h = 7p. p50: h 3.5 -> 4 + 0.5 * (5 - 4) = 4.5; p90: h 6.3 -> 7 + 0.3 * 2 = 7.6; p99: h 6.93 -> 7 + 0.93 * 2 = 8.86
  t.ok(near(s.p50, 4.5), 'p50');
  t.ok(near(s.p90, 7.6), 'p90');
  t.ok(near(s.p99, 8.86), 'p99');
});

t.test('percentiles of 1..100 and of one value', async (t) => {
  const values = Array.from({ length: 100 }, (_, i) => i + 1);
  t.ok(near(percentile(values, 0.5), 50.5), 'p50');
  t.ok(near(percentile(values, 0.9), 90.1), 'p90');
  t.ok(near(percentile(values, 0.99), 99.01), 'p99');
  t.equal(percentile(values, 0), 1);
  t.equal(percentile(values, 1), 100);
  const one = columnStats([42]);
  t.strictSame(one, {
    count: 1,
    missing: 0,
    mean: 42,
    stddev: null,
    min: 42,
    max: 42,
    p50: 42,
    p90: 42,
    p99: 42,
  });
});

t.test('nulls are missing and left out; an all-null column has null statistics', async (t) => {
  const s = columnStats([null, 1, null, 3]);
  t.equal(s.count, 2);
  t.equal(s.missing, 2);
  t.equal(s.mean, 2);
  t.equal(s.p50, 2);
  t.strictSame(columnStats([null, null]), {
    count: 0,
    missing: 2,
    mean: null,
    stddev: null,
    min: null,
    max: null,
    p50: null,
    p90: null,
    p99: null,
  });
});

t.test('unsorted input and a large offset do not disturb the result (Welford)', async (t) => {
  const s = columnStats([1e9 + 3, 1e9 + 1, 1e9 + 2]);
  t.equal(s.mean, 1e9 + 2);
  t.ok(near(s.stddev, 1), 'stddev');
  t.equal(s.min, 1e9 + 1);
  t.equal(s.p50, 1e9 + 2);
});

t.test('rows and columns give the same statistics; a missing key counts as missing', async (t) => {
  const byColumns = datasetStats({ columns: { a: [1, 2, 3], b: [10, null, 30] } });
  const byRows = datasetStats({ rows: [{ a: 1, b: 10 }, { a: 2 }, { a: 3, b: 30 }] });
  t.strictSame(byRows, byColumns);
  t.equal(byRows.rowCount, 3);
  t.equal(byRows.columns['b']?.missing, 1);
  t.strictSame(Object.keys(byRows.columns), ['a', 'b']);
});

t.test('as a tool: exactly one of columns or rows, numbers or null only', async (t) => {
  const tool = new ToolRegistry().register(datasetStatsTool);
  t.ok(tool.manifest.cacheable && tool.manifest.idempotent);
  const out = (await tool.run({ columns: { x: [1, 2] } }, ctx())) as ReturnType<typeof datasetStats>;
  t.equal(out.columns['x']?.mean, 1.5);
  for (const bad of [
    {},
    { columns: { x: [1] }, rows: [] },
    { columns: { x: ['1'] } },
    { rows: [{ x: true }] },
    { columns: { '': [1] } },
  ]) {
    t.type(await tool.run(bad, ctx()).catch((e: unknown) => e), ToolInputError, JSON.stringify(bad));
  }
});
