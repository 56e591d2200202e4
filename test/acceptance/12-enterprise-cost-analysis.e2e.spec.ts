/**
 * Scenario 12 — a realistic business workflow: an enterprise's monthly cloud cost analysis.
 *
 * An analyst's agent takes one month of billing for an enterprise (6 000 resources over six
 * services and four regions, generated here from a seeded PRNG, about $2.5M of spend) and, through
 * the running stack, (1) profiles utilization and cost with `dataset_stats`, (2) runs
 * `cost_analyzer` on each region's rows (one request per region, at once, each under the request
 * size limit), (3) asks again for one region and is served from its cache, and (4) re-runs one
 * region with the finance team's own thresholds. Proves: every figure the tools return — spend by
 * service and region, savings by kind, total potential savings, the ranked recommendations, and
 * the column statistics — equals an independent calculation written here from the rules in
 * docs/tools.md (no tool code is imported for expected values); the whole-enterprise numbers the
 * agent adds up match the independent totals to the cent per region; the user's socket shows each
 * analysis complete with the same result; the executions are recorded and projected.
 */
import t from 'tap';
import { LIMITS, type JsonObject } from '../../contracts/index.ts';
import type { TerminalAnswer } from '../../lib/clients/agent.ts';
import { subscribe } from '../../services/notifier/test-client.ts';
import { startTestStack } from '../support/stack.ts';
import { dbPool, http, newUserId, projectorCaughtUp, prng, terminal, userEvents } from './support.ts';

// ---------------------------------------------------------------------------------------------
// The billing month.

interface Row {
  service: string;
  region: string;
  resourceId: string;
  usageHours: number;
  hourlyRate: number;
  utilization: number;
  commitment?: 'on_demand' | 'reserved';
}

const REGIONS = ['us-east-1', 'us-west-2', 'eu-west-1', 'ap-southeast-1'];
const SERVICES: Record<string, [number, number]> = {
  // hourly rate range
  EC2: [0.04, 0.9],
  RDS: [0.15, 1.8],
  ElastiCache: [0.075, 0.75],
  EKS: [0.075, 0.3],
  OpenSearch: [0.11, 1.2],
  Redshift: [0.19, 2.1],
};
const PER_REGION = 1_500;

function billingMonth(seed: number): Row[] {
  const random = prng(seed);
  const pick = <T>(xs: T[]) => xs[Math.floor(random() * xs.length)]!;
  const rows: Row[] = [];
  const services = Object.keys(SERVICES);
  for (const region of REGIONS) {
    for (let i = 0; i < PER_REGION; i++) {
      const service = pick(services);
      const [lo, hi] = SERVICES[service]!;
      const band = random();
      // 10 % idle, 35 % oversized, 20 % moderate, 35 % busy.
      const utilization =
        band < 0.1
          ? random() * 0.05
          : band < 0.45
            ? 0.05 + random() * 0.35
            : band < 0.65
              ? 0.4 + random() * 0.3
              : 0.7 + random() * 0.3;
      const row: Row = {
        service,
        region,
        resourceId: `${service.toLowerCase()}-${region}-${String(i).padStart(4, '0')}`,
        usageHours: random() < 0.8 ? 720 : 1 + Math.floor(random() * 720),
        hourlyRate: Math.round((lo + random() * (hi - lo)) * 10_000) / 10_000,
        utilization: Math.round(utilization * 1000) / 1000,
      };
      const c = random();
      if (c < 0.3) row.commitment = 'reserved';
      else if (c < 0.6) row.commitment = 'on_demand'; // else absent: on demand
      rows.push(row);
    }
  }
  // The thresholds exactly (docs/tools.md: 0.05 is rightsize, 0.4 is none, 0.7 on demand is reserved).
  const edge = (resourceId: string, utilization: number, commitment?: 'reserved'): Row => ({
    service: 'EC2',
    region: 'us-east-1',
    resourceId,
    usageHours: 720,
    hourlyRate: 0.5,
    utilization,
    ...(commitment ? { commitment } : {}),
  });
  rows.push(
    edge('edge-idle-boundary', 0.05),
    edge('edge-rightsize-boundary', 0.4),
    edge('edge-reserved-boundary', 0.7),
  );
  rows.push(edge('edge-reserved-already', 0.95, 'reserved'), { ...edge('edge-free', 0.01), hourlyRate: 0 });
  return rows;
}

// ---------------------------------------------------------------------------------------------
// The independent calculation, from docs/tools.md.

interface Options {
  idleBelow: number;
  rightsizeBelow: number;
  headroom: number;
  reservedFrom: number;
  reservedDiscount: number;
  maxRecommendations: number;
}
const DEFAULTS: Options = {
  idleBelow: 0.05,
  rightsizeBelow: 0.4,
  headroom: 0.2,
  reservedFrom: 0.7,
  reservedDiscount: 0.3,
  maxRecommendations: 100,
};

/** Half away from zero to cents, once, on the unrounded value; -0 reported as 0. */
const cents = (x: number) => (Math.sign(x) * Math.round(Math.abs(x) * 100)) / 100 + 0;

function expectedAnalysis(rows: Row[], o: Options = DEFAULTS) {
  let total = 0;
  const byService = new Map<string, number>();
  const byRegion = new Map<string, number>();
  const byKind = { idle: 0, rightsize: 0, reserved: 0 };
  let savings = 0;
  const recs: Array<{ kind: keyof typeof byKind; row: Row; cost: number; savings: number }> = [];
  for (const row of rows) {
    const cost = row.usageHours * row.hourlyRate;
    total += cost;
    byService.set(row.service, (byService.get(row.service) ?? 0) + cost);
    byRegion.set(row.region, (byRegion.get(row.region) ?? 0) + cost);
    const u = row.utilization;
    let kind: keyof typeof byKind | null = null;
    let s = 0;
    if (u < o.idleBelow) {
      kind = 'idle';
      s = cost;
    } else if (u < o.rightsizeBelow) {
      kind = 'rightsize';
      s = cost * (1 - Math.min(1, u * (1 + o.headroom)));
    } else if ((row.commitment ?? 'on_demand') === 'on_demand' && u >= o.reservedFrom) {
      kind = 'reserved';
      s = cost * o.reservedDiscount;
    }
    if (kind === null || s === 0) continue;
    byKind[kind] += s;
    savings += s;
    recs.push({ kind, row, cost, savings: s });
  }
  recs.sort(
    (a, b) =>
      b.savings - a.savings ||
      (a.row.resourceId < b.row.resourceId ? -1 : a.row.resourceId > b.row.resourceId ? 1 : 0),
  );
  const sorted = (m: Map<string, number>) =>
    Object.fromEntries([...m.keys()].sort().map((k) => [k, cents(m.get(k)!)]));
  return {
    rowCount: rows.length,
    totalMonthlySpend: cents(total),
    spendByService: sorted(byService),
    spendByRegion: sorted(byRegion),
    savingsByKind: {
      idle: cents(byKind.idle),
      rightsize: cents(byKind.rightsize),
      reserved: cents(byKind.reserved),
    },
    totalPotentialSavings: cents(savings),
    recommendationCount: recs.length,
    recommendations: recs.slice(0, o.maxRecommendations).map((r) => ({
      kind: r.kind,
      resourceId: r.row.resourceId,
      service: r.row.service,
      region: r.row.region,
      utilization: r.row.utilization,
      monthlyCost: cents(r.cost),
      savings: cents(r.savings),
    })),
  };
}
type Analysis = ReturnType<typeof expectedAnalysis>;
type ToolAnalysis = Omit<Analysis, 'recommendations'> & {
  recommendations: Array<Analysis['recommendations'][number] & { action: string }>;
};

/** Type-7 quantile of sorted values (docs/tools.md, dataset_stats). */
const quantile = (sorted: number[], p: number) => {
  const h = (sorted.length - 1) * p;
  const lo = Math.floor(h);
  return sorted[lo]! + (h - lo) * ((sorted[Math.min(lo + 1, sorted.length - 1)] ?? 0) - sorted[lo]!);
};
const close = (a: number | null | undefined, b: number) =>
  a !== null && a !== undefined && Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b));

// ---------------------------------------------------------------------------------------------

const rows = billingMonth(20_241_207);
const s = await startTestStack(t);
const pool = dbPool(t, s);
const analyst = newUserId('acme-finops');
const token = await s.token(analyst);
const socket = await subscribe(s.url('notifier'), token);
t.teardown(() => socket.ws.close());

const byRegion = (region: string) => rows.filter((r) => r.region === region);
const analyse = async (regionRows: Row[], options?: Partial<Options>): Promise<TerminalAnswer> => {
  const args = { rows: regionRows, ...(options ? { options } : {}) } as unknown as JsonObject;
  return terminal(
    await s.agent.execute('cost_analyzer', args, { token, correlationId: 'acme-2024-11-cost-review' }),
  );
};

const expectedAll = expectedAnalysis(rows);
const regionalAnswers = new Map<string, TerminalAnswer>();

t.test('the billing month is what an enterprise would have', async (t) => {
  t.equal(rows.length, REGIONS.length * PER_REGION + 5, `${rows.length} billing rows`);
  t.ok(
    expectedAll.totalMonthlySpend > 2_000_000 && expectedAll.totalMonthlySpend < 3_000_000,
    `monthly spend $${expectedAll.totalMonthlySpend}`,
  );
  t.ok(
    expectedAll.totalPotentialSavings > 400_000,
    `independent calculation: $${expectedAll.totalPotentialSavings} potential savings`,
  );
  for (const region of REGIONS) {
    const size = Buffer.byteLength(
      JSON.stringify({
        requestId: 'x'.repeat(36),
        tool: 'cost_analyzer',
        args: { rows: byRegion(region) },
        replyTo: '_INBOX.x'.repeat(8),
        correlationId: 'acme-2024-11-cost-review',
        progress: false,
      }),
    );
    t.ok(
      size < LIMITS.maxRequestBytes,
      `${region}: one request of ${size} bytes, under the ${LIMITS.maxRequestBytes} limit`,
    );
  }
});

t.test('step 1: profile utilization and spend with dataset_stats', async (t) => {
  const utilization = rows.map((r) => r.utilization);
  const cost = rows.map((r) => Math.round(r.usageHours * r.hourlyRate * 100) / 100);
  const a = terminal(await s.agent.execute('dataset_stats', { columns: { utilization, cost } }, { token }));
  t.equal(a.status, 'completed');
  const result =
    a.status === 'completed'
      ? (a.result as { rowCount: number; columns: Record<string, Record<string, number | null>> })
      : null;
  t.equal(result?.rowCount, rows.length);
  for (const [name, values] of [
    ['utilization', utilization],
    ['cost', cost],
  ] as const) {
    const col = result?.columns[name] ?? {};
    const sorted = [...values].sort((x, y) => x - y);
    const mean = values.reduce((x, y) => x + y, 0) / values.length;
    const variance = values.reduce((acc, v) => acc + (v - mean) ** 2, 0) / (values.length - 1);
    t.equal(col['count'], values.length, `${name}: count`);
    t.equal(col['missing'], 0, `${name}: nothing missing`);
    t.equal(col['min'], sorted[0], `${name}: min`);
    t.equal(col['max'], sorted.at(-1), `${name}: max`);
    t.ok(close(col['mean'], mean), `${name}: mean ${col['mean']} = ${mean}`);
    t.ok(
      close(col['stddev'], Math.sqrt(variance)),
      `${name}: sample stddev ${col['stddev']} = ${Math.sqrt(variance)}`,
    );
    for (const [k, p] of [
      ['p50', 0.5],
      ['p90', 0.9],
      ['p99', 0.99],
    ] as const) {
      t.ok(close(col[k], quantile(sorted, p)), `${name}: ${k} ${col[k]} = ${quantile(sorted, p)}`);
    }
  }
});

t.test('step 2: cost_analyzer per region, all at once, matches the independent calculation', async (t) => {
  const answers = await Promise.all(
    REGIONS.map(async (region) => [region, await analyse(byRegion(region))] as const),
  );
  for (const [region, a] of answers) {
    regionalAnswers.set(region, a);
    t.equal(a.status, 'completed', `${region}: completed`);
    if (a.status !== 'completed') continue;
    const got = a.result as unknown as ToolAnalysis;
    const want = expectedAnalysis(byRegion(region));
    const { recommendations, ...totals } = got;
    const { recommendations: wantRecs, ...wantTotals } = want;
    t.same(
      totals,
      wantTotals,
      `${region}: spend by service and region, savings by kind, total savings — $${want.totalPotentialSavings} of $${want.totalMonthlySpend}`,
    );
    t.same(
      recommendations.map(({ action: _action, ...r }) => r),
      wantRecs,
      `${region}: the top ${wantRecs.length} recommendations, ranked by savings`,
    );
    t.ok(
      recommendations.every((r) => r.action.length > 0),
      `${region}: each recommendation says what to do`,
    );
  }

  // The agent's whole-enterprise view: the regional figures added up.
  const regional = [...regionalAnswers.values()].map((a) =>
    a.status === 'completed' ? (a.result as unknown as ToolAnalysis) : null,
  );
  const sum = (f: (x: ToolAnalysis) => number) => regional.reduce((acc, x) => acc + (x ? f(x) : NaN), 0);
  const tolerance = 0.01 * REGIONS.length;
  t.ok(
    Math.abs(sum((x) => x.totalMonthlySpend) - expectedAll.totalMonthlySpend) <= tolerance,
    `enterprise spend $${sum((x) => x.totalMonthlySpend).toFixed(2)} ≈ $${expectedAll.totalMonthlySpend}`,
  );
  t.ok(
    Math.abs(sum((x) => x.totalPotentialSavings) - expectedAll.totalPotentialSavings) <= tolerance,
    `enterprise savings $${sum((x) => x.totalPotentialSavings).toFixed(2)} ≈ $${expectedAll.totalPotentialSavings}`,
  );
  t.equal(
    sum((x) => x.recommendationCount),
    expectedAll.recommendationCount,
    `${expectedAll.recommendationCount} recommendations in all`,
  );
  for (const kind of ['idle', 'rightsize', 'reserved'] as const) {
    t.ok(
      Math.abs(sum((x) => x.savingsByKind[kind]) - expectedAll.savingsByKind[kind]) <= tolerance,
      `${kind}: $${expectedAll.savingsByKind[kind]}`,
    );
  }

  // The edge rows save little, so they fall outside the top 100: check them on their own.
  const alone = await analyse(rows.filter((r) => r.resourceId.startsWith('edge-')));
  const aloneKinds = Object.fromEntries(
    (alone.status === 'completed' ? (alone.result as unknown as ToolAnalysis).recommendations : []).map(
      (r) => [r.resourceId, r.kind],
    ),
  );
  t.same(
    aloneKinds,
    { 'edge-idle-boundary': 'rightsize', 'edge-reserved-boundary': 'reserved' },
    'thresholds are exact: 0.05 is rightsize, 0.4 is nothing, 0.7 on demand is reserved; reserved and free rows get none',
  );
});

t.test('step 3: asking again for a region is served from the cache, with the same figures', async (t) => {
  const again = await analyse(byRegion('eu-west-1'));
  const first = regionalAnswers.get('eu-west-1')!;
  t.ok(again.status === 'completed' && again.cached, 'served from the cache');
  t.same(
    again.status === 'completed' ? again.result : null,
    first.status === 'completed' ? first.result : undefined,
    'the same analysis',
  );
});

t.test("step 4: the finance team's own thresholds", async (t) => {
  const options: Options = {
    idleBelow: 0.1,
    rightsizeBelow: 0.5,
    headroom: 0.3,
    reservedFrom: 0.6,
    reservedDiscount: 0.42,
    maxRecommendations: 25,
  };
  const a = await analyse(byRegion('ap-southeast-1'), options);
  t.equal(a.status, 'completed');
  const got = a.status === 'completed' ? (a.result as unknown as ToolAnalysis) : null;
  const want = expectedAnalysis(byRegion('ap-southeast-1'), options);
  t.same(
    got && { ...got, recommendations: got.recommendations.map(({ action: _a, ...r }) => r) },
    want,
    `savings $${want.totalPotentialSavings} with the team's thresholds, top 25`,
  );
  const defaults = regionalAnswers.get('ap-southeast-1');
  t.not(
    want.totalPotentialSavings,
    defaults?.status === 'completed'
      ? (defaults.result as unknown as ToolAnalysis).totalPotentialSavings
      : null,
    'and different from the defaults (the options were applied)',
  );
});

t.test('the analyses are visible to the analyst and recorded', async (t) => {
  const stored = await userEvents(s.store, analyst);
  const completed = stored.filter((e) => e.event.type === 'ToolCompleted');
  await socket.waitFor(
    'every completion on the socket',
    () => socket.events().filter((n) => n.name === 'tool_completed').length === completed.length,
  );
  for (const [region, a] of regionalAnswers) {
    const note = socket
      .events()
      .find((n) => n.name === 'tool_completed' && n.event.metadata.executionId === a.executionId);
    t.same(
      note && note.event.type === 'ToolCompleted' ? note.event.data.result : null,
      a.status === 'completed' ? a.result : undefined,
      `${region}: the socket showed the same analysis`,
    );
    t.equal(
      note?.event.metadata.correlationId,
      'acme-2024-11-cost-review',
      `${region}: under the review's correlation id`,
    );
  }
  const check = await projectorCaughtUp(s, pool, { expectedEvents: stored.length });
  t.ok(check.equal, 'the read models equal a replay');
  const { body } = await http<{
    tools: Array<{ tool: string; completed: number; cached: number; failed: number }>;
  }>(`${s.url('projector')}/tools/metrics?tool=cost_analyzer`, { token });
  t.same(
    body.tools.map((m) => ({ completed: m.completed, cached: m.cached, failed: m.failed })),
    [{ completed: REGIONS.length + 3, cached: 1, failed: 0 }],
    'cost_analyzer: every analysis completed, one from the cache',
  );
});
