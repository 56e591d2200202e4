import { z } from 'zod';
import { defineTool } from '../../../lib/tools/index.ts';

/**
 * Cloud cost analysis over one month of billing rows. The rules are documented exactly in
 * docs/tools.md ("cost_analyzer"), because acceptance tests recompute them independently:
 *
 *   cost(row)    = usageHours * hourlyRate
 *   idle         utilization <  idleBelow (0.05)        savings = cost
 *   rightsize    utilization <  rightsizeBelow (0.4)    savings = cost * (1 - utilization * (1 + headroom)), headroom 0.2
 *   reserved     on_demand and utilization >= reservedFrom (0.7)   savings = cost * reservedDiscount (0.3)
 *
 * The first rule that applies wins. Money is rounded once, at the end, to cents.
 */

export const BillingRow = z.object({
  service: z.string().min(1).max(64),
  region: z.string().min(1).max(64),
  resourceId: z.string().min(1).max(256),
  usageHours: z.number().min(0).max(1_000_000),
  hourlyRate: z.number().min(0).max(1_000_000),
  utilization: z.number().min(0).max(1),
  commitment: z.enum(['on_demand', 'reserved']).optional(),
});
export type BillingRow = z.infer<typeof BillingRow>;

export const CostOptions = z.object({
  idleBelow: z.number().min(0).max(1).default(0.05),
  rightsizeBelow: z.number().min(0).max(1).default(0.4),
  headroom: z.number().min(0).max(1).default(0.2),
  reservedFrom: z.number().min(0).max(1).default(0.7),
  reservedDiscount: z.number().min(0).max(1).default(0.3),
  /** At most this many recommendations are listed (largest savings first); the totals count all. */
  maxRecommendations: z.number().int().min(0).max(100_000).default(100),
});
export type CostOptions = z.infer<typeof CostOptions>;

const Input = z
  .object({
    rows: z.array(BillingRow).max(100_000),
    options: CostOptions.optional(),
  })
  .refine((v) => (v.options?.idleBelow ?? 0.05) <= (v.options?.rightsizeBelow ?? 0.4), {
    message: 'options.idleBelow must not exceed options.rightsizeBelow',
    path: ['options', 'idleBelow'],
  });

const Money = z.number();
const Kind = z.enum(['idle', 'rightsize', 'reserved']);

const Recommendation = z.object({
  kind: Kind,
  resourceId: z.string(),
  service: z.string(),
  region: z.string(),
  utilization: z.number(),
  monthlyCost: Money,
  savings: Money,
  action: z.string(),
});

const Output = z.object({
  rowCount: z.number().int(),
  totalMonthlySpend: Money,
  spendByService: z.record(z.string(), Money),
  spendByRegion: z.record(z.string(), Money),
  savingsByKind: z.object({ idle: Money, rightsize: Money, reserved: Money }),
  totalPotentialSavings: Money,
  recommendationCount: z.number().int(),
  recommendations: z.array(Recommendation),
});
export type CostReport = z.infer<typeof Output>;

/** Half away from zero, to cents: Math.round on the magnitude of x * 100. */
export const roundCents = (x: number): number => (Math.sign(x) * Math.round(Math.abs(x) * 100)) / 100 || 0;

/** The savings rule for one row, unrounded; undefined when no rule applies or it saves nothing. */
export function rowSavings(
  row: BillingRow,
  o: Omit<CostOptions, 'maxRecommendations'>,
): { kind: z.infer<typeof Kind>; cost: number; savings: number; action: string } | undefined {
  const cost = row.usageHours * row.hourlyRate;
  const u = row.utilization;
  let result: { kind: z.infer<typeof Kind>; savings: number; action: string } | undefined;
  if (u < o.idleBelow) {
    result = { kind: 'idle', savings: cost, action: `idle (utilization ${pct(u)}): stop or delete it` };
  } else if (u < o.rightsizeBelow) {
    const target = Math.min(1, u * (1 + o.headroom));
    result = {
      kind: 'rightsize',
      savings: cost * (1 - target),
      action: `downsize to ${pct(target)} of current capacity (utilization ${pct(u)} plus ${pct(o.headroom)} headroom)`,
    };
  } else if ((row.commitment ?? 'on_demand') === 'on_demand' && u >= o.reservedFrom) {
    result = {
      kind: 'reserved',
      savings: cost * o.reservedDiscount,
      action: `steady on-demand use (utilization ${pct(u)}): buy a reservation (${pct(o.reservedDiscount)} cheaper)`,
    };
  }
  if (!result || !(result.savings > 0)) return undefined;
  return { ...result, cost };
}

const pct = (x: number) => `${Math.round(x * 1000) / 10}%`;

export function analyzeCosts(rows: readonly BillingRow[], options: Partial<CostOptions> = {}): CostReport {
  const o = CostOptions.parse(options);
  let total = 0;
  const byService = new Map<string, number>();
  const byRegion = new Map<string, number>();
  const byKind = { idle: 0, rightsize: 0, reserved: 0 };
  let totalSavings = 0;
  const found: Array<z.infer<typeof Recommendation> & { exact: number }> = [];
  for (const row of rows) {
    const cost = row.usageHours * row.hourlyRate;
    total += cost;
    byService.set(row.service, (byService.get(row.service) ?? 0) + cost);
    byRegion.set(row.region, (byRegion.get(row.region) ?? 0) + cost);
    const s = rowSavings(row, o);
    if (!s) continue;
    byKind[s.kind] += s.savings;
    totalSavings += s.savings;
    found.push({
      kind: s.kind,
      resourceId: row.resourceId,
      service: row.service,
      region: row.region,
      utilization: row.utilization,
      monthlyCost: roundCents(cost),
      savings: roundCents(s.savings),
      action: s.action,
      exact: s.savings,
    });
  }
  found.sort(
    (a, b) => b.exact - a.exact || (a.resourceId < b.resourceId ? -1 : a.resourceId > b.resourceId ? 1 : 0),
  );
  const sortedRecord = (m: Map<string, number>) =>
    Object.fromEntries([...m.keys()].sort().map((k) => [k, roundCents(m.get(k)!)]));
  return {
    rowCount: rows.length,
    totalMonthlySpend: roundCents(total),
    spendByService: sortedRecord(byService),
    spendByRegion: sortedRecord(byRegion),
    savingsByKind: {
      idle: roundCents(byKind.idle),
      rightsize: roundCents(byKind.rightsize),
      reserved: roundCents(byKind.reserved),
    },
    totalPotentialSavings: roundCents(totalSavings),
    recommendationCount: found.length,
    recommendations: found.slice(0, o.maxRecommendations).map(({ exact: _exact, ...r }) => r),
  };
}

/** Above this month's spend (sum of usageHours * hourlyRate) a call waits for an approver. */
export const COST_APPROVAL_THRESHOLD = 10_000_000;

export const costAnalyzer = defineTool({
  name: 'cost_analyzer',
  version: '1.0.0',
  description:
    'Analyses one month of cloud billing rows: total spend, spend by service and by region, and savings recommendations ' +
    '(idle resources, rightsizing, reserved-instance conversion) with amounts in the billing currency.',
  input: Input,
  output: Output,
  timeoutMs: 30_000,
  idempotent: true,
  cacheable: true,
  // A month's billing above ten million is somebody's whole budget: a finance approver looks
  // first (docs/approval.md). Plain JSON, so a remote worker can announce the same rule.
  approval: {
    approverRoles: ['approver'],
    timeoutMs: 60 * 60_000,
    when: [
      {
        path: 'rows.*.usageHours',
        times: 'hourlyRate',
        aggregate: 'sum',
        op: 'gt',
        value: COST_APPROVAL_THRESHOLD,
      },
    ],
  },
  annotations: {
    title: 'Cloud cost analyzer',
    readOnlyHint: true,
    destructiveHint: false,
    idempotentHint: true,
    openWorldHint: false,
  },
  async run({ rows, options }, ctx) {
    ctx.progress({ fraction: 0, message: `analysing ${rows.length} rows` });
    const report = analyzeCosts(rows, options ?? {});
    ctx.progress({ fraction: 1 });
    return report;
  },
});
