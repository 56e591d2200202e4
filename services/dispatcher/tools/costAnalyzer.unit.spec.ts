import t from 'tap';
import { ToolInputError, ToolRegistry, type ToolContext } from '../../../lib/tools/index.ts';
import { analyzeCosts, costAnalyzer, roundCents, type BillingRow } from './costAnalyzer.ts';

const ctx = (): ToolContext => ({
  signal: new AbortController().signal,
  userId: 'u1',
  roles: [],
  executionId: '00000000-0000-5000-8000-000000000000',
  requestId: 'r1',
  correlationId: 'c1',
  progress: () => undefined,
});

// Worked by hand (see docs/tools.md for the rules):
//   web-1    72.00  util 0.02          idle       saves 72.00
//   web-2   144.00  util 0.25          rightsize  target 0.30 -> saves 144 * 0.70 = 100.80
//   db-1    360.00  util 0.80 on_dem.  reserved   saves 360 * 0.30 = 108.00
//   db-2    360.00  util 0.90 reserved none
//   cache-1   3.33  util 0.50          none
//   batch-1  12.957 util 0.10          rightsize  target 0.12 -> saves 12.957 * 0.88 = 11.40216
const rows: BillingRow[] = [
  {
    service: 'EC2',
    region: 'us-east-1',
    resourceId: 'web-1',
    usageHours: 720,
    hourlyRate: 0.1,
    utilization: 0.02,
  },
  {
    service: 'EC2',
    region: 'us-east-1',
    resourceId: 'web-2',
    usageHours: 720,
    hourlyRate: 0.2,
    utilization: 0.25,
    commitment: 'on_demand',
  },
  {
    service: 'RDS',
    region: 'eu-west-1',
    resourceId: 'db-1',
    usageHours: 720,
    hourlyRate: 0.5,
    utilization: 0.8,
  },
  {
    service: 'RDS',
    region: 'eu-west-1',
    resourceId: 'db-2',
    usageHours: 720,
    hourlyRate: 0.5,
    utilization: 0.9,
    commitment: 'reserved',
  },
  {
    service: 'ElastiCache',
    region: 'us-east-1',
    resourceId: 'cache-1',
    usageHours: 100,
    hourlyRate: 0.0333,
    utilization: 0.5,
  },
  {
    service: 'EC2',
    region: 'eu-west-1',
    resourceId: 'batch-1',
    usageHours: 10.5,
    hourlyRate: 1.234,
    utilization: 0.1,
  },
];

t.test('spend and savings on a hand-computed month', async (t) => {
  const r = analyzeCosts(rows);
  t.equal(r.rowCount, 6);
  t.equal(r.totalMonthlySpend, 952.29);
  t.strictSame(r.spendByService, { EC2: 228.96, ElastiCache: 3.33, RDS: 720 });
  t.strictSame(r.spendByRegion, { 'eu-west-1': 732.96, 'us-east-1': 219.33 });
  t.strictSame(r.savingsByKind, { idle: 72, rightsize: 112.2, reserved: 108 });
  t.equal(r.totalPotentialSavings, 292.2);
  t.equal(r.recommendationCount, 4);
  t.strictSame(
    r.recommendations.map((x) => [x.resourceId, x.kind, x.monthlyCost, x.savings]),
    [
      ['db-1', 'reserved', 360, 108],
      ['web-2', 'rightsize', 144, 100.8],
      ['web-1', 'idle', 72, 72],
      ['batch-1', 'rightsize', 12.96, 11.4],
    ],
  );
  t.match(r.recommendations[1]?.action, /downsize to 30% of current capacity/);
});

t.test('the thresholds are exact: idle below 0.05, rightsize below 0.4, reserved from 0.7', async (t) => {
  const row = (utilization: number, commitment?: 'on_demand' | 'reserved'): BillingRow => ({
    service: 's',
    region: 'r',
    resourceId: `u${utilization}`,
    usageHours: 100,
    hourlyRate: 1,
    utilization,
    ...(commitment ? { commitment } : {}),
  });
  const kind = (r: BillingRow) => analyzeCosts([r]).recommendations[0]?.kind ?? 'none';
  t.equal(kind(row(0)), 'idle');
  t.equal(kind(row(0.0499)), 'idle');
  t.equal(kind(row(0.05)), 'rightsize');
  t.equal(analyzeCosts([row(0.05)]).totalPotentialSavings, 94, '100 * (1 - 0.06)');
  t.equal(kind(row(0.3999)), 'rightsize');
  t.equal(kind(row(0.4)), 'none');
  t.equal(kind(row(0.6999)), 'none');
  t.equal(kind(row(0.7)), 'reserved');
  t.equal(kind(row(1)), 'reserved');
  t.equal(kind(row(0.7, 'reserved')), 'none', 'already reserved');
  t.equal(kind(row(0.01, 'reserved')), 'idle', 'idle applies whatever the commitment');
  t.equal(kind(row(0.2, 'reserved')), 'rightsize');
});

t.test('options change the rules', async (t) => {
  const r = analyzeCosts(rows, { idleBelow: 0.2, reservedDiscount: 0.5, headroom: 0 });
  // web-1 (0.02) and batch-1 (0.10) idle; web-2 rightsize to 0.25; db-1 reserved at 50 %.
  t.strictSame(r.savingsByKind, { idle: roundCents(72 + 12.957), rightsize: 108, reserved: 180 });
});

t.test('a long list is cut to maxRecommendations, the totals still count everything', async (t) => {
  const many: BillingRow[] = Array.from({ length: 250 }, (_, i) => ({
    service: 'EC2',
    region: 'r',
    resourceId: `i-${String(i).padStart(3, '0')}`,
    usageHours: 1,
    hourlyRate: 1 + i,
    utilization: 0,
  }));
  const r = analyzeCosts(many, { maxRecommendations: 10 });
  t.equal(r.recommendations.length, 10);
  t.equal(r.recommendationCount, 250);
  t.equal(r.recommendations[0]?.resourceId, 'i-249', 'largest savings first');
  t.equal(r.totalPotentialSavings, (250 * 251) / 2);
  t.equal(analyzeCosts(many).recommendations.length, 100, 'default 100');
});

t.test('no rows: zeros, not errors', async (t) => {
  t.strictSame(analyzeCosts([]), {
    rowCount: 0,
    totalMonthlySpend: 0,
    spendByService: {},
    spendByRegion: {},
    savingsByKind: { idle: 0, rightsize: 0, reserved: 0 },
    totalPotentialSavings: 0,
    recommendationCount: 0,
    recommendations: [],
  });
});

t.test('roundCents rounds half away from zero, never gives -0', async (t) => {
  t.equal(roundCents(0.125), 0.13);
  t.equal(roundCents(-0.125), -0.13);
  t.equal(roundCents(11.40216), 11.4);
  t.ok(Object.is(roundCents(-0.001), 0));
});

t.test('as a tool: validates rows, and handles 100k of them', async (t) => {
  const registry = new ToolRegistry();
  const tool = registry.register(costAnalyzer);
  t.ok(tool.manifest.cacheable);
  t.ok(tool.manifest.idempotent);
  t.equal(tool.manifest.annotations?.readOnlyHint, true);
  const bad = await tool.run({ rows: [{ ...rows[0], utilization: 1.5 }] }, ctx()).catch((e: unknown) => e);
  t.type(bad, ToolInputError);
  t.match((bad as Error).message, /rows\[0\]\.utilization/);
  t.type(
    await tool.run({ rows: [{ ...rows[0], commitment: 'spot' }] }, ctx()).catch((e: unknown) => e),
    ToolInputError,
  );
  t.type(
    await tool.run({ rows: Array.from({ length: 100_001 }, () => rows[0]) }, ctx()).catch((e: unknown) => e),
    ToolInputError,
  );

  const big = Array.from({ length: 100_000 }, (_, i) => rows[i % rows.length]!);
  const report = (await tool.run({ rows: big }, ctx())) as ReturnType<typeof analyzeCosts>;
  t.equal(report.rowCount, 100_000);
  const expected = big.reduce((s, r) => s + r.usageHours * r.hourlyRate, 0);
  t.equal(report.totalMonthlySpend, roundCents(expected));
  t.equal(report.recommendations.length, 100);
  // Rows 0, 1, 2 and 5 of each cycle of six have a recommendation.
  t.equal(report.recommendationCount, big.filter((_, i) => [0, 1, 2, 5].includes(i % 6)).length);
});
