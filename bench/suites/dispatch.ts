import { setTimeout as sleep } from 'node:timers/promises';
import type { RunRequest, Workload } from '../loadgen.ts';
import { cpuUs, type BenchContext, type Service } from '../lib/context.ts';
import {
  decodeHistogram,
  newHistogram,
  summarize,
  type Histogram,
  type LatencySummary,
} from '../lib/histogram.ts';
import type { Child } from '../lib/ipc.ts';
import type { OpenLoopResult } from '../lib/openloop.ts';
import type { ProfileSummary, Ranked } from '../lib/profile.ts';
import {
  COST_ROLES,
  CostMeter,
  databaseOf,
  procCpuUs,
  type Cost,
  type CostExtra,
  type CostRole,
  type CostSources,
} from '../lib/proc.ts';
import { figure, target, type BenchResult, type Table } from '../lib/report.ts';
import { afterWarmup, outsideP50, spanP50, type Marks } from '../lib/steps.ts';

/**
 * Benchmarks 1, 2 and 6: dispatch latency at two fixed loads, the highest sustained dispatch
 * throughput, and CPU per dispatch, each beside its references (bench/README.md). Systems that are
 * compared are measured in alternation (rounds of segments, ladders stepped together), so that
 * the noise of a shared machine falls on all of them alike.
 */

/** The two fixed offered loads of benchmark 1 (requests per second). */
export const LOADS = [50, 200] as const;
/** Benchmark 2's bar: p99 at or under this at a sustained rate. */
export const P99_BOUND_MS = 50;
const USERS = 50;
/** The dispatcher's event store pool (lib/eventstore/postgres.ts default); the references get as many connections. */
const STORE_POOL = 10;
/** DISPATCH_CONCURRENCY's default; the BullMQ worker gets the same. */
const CONCURRENCY = 64;
/** A load generator using this much CPU (cores) is taken as saturated: one Node.js thread is about one core. */
const SATURATED_CORES = 0.8;
/** The ladder's lowest rate when even its first step fails. */
const FLOOR_RATE = 5;

/** The lanes set up with the dispatch suite, used by several benchmarks. */
type BaseSystem = 'toolbus' | 'nats-rr' | 'nats-rr-pg' | 'bullmq' | 'pg-inserts';
/** Lanes of benchmarks 2 and 2c only, set up for their ladder and stopped after it. */
type ExtraSystem = 'toolbus-2' | 'toolbus-cluster';
export type System = BaseSystem | ExtraSystem;

/** How each system is named in the report. */
export const SYSTEM_NAMES: Record<System, string> = {
  toolbus: 'Toolbus, 1 dispatcher',
  'toolbus-2': 'Toolbus, 2 dispatchers',
  'toolbus-cluster': 'Toolbus, 3-node NATS cluster (R3), 2 dispatchers',
  'nats-rr': 'NATS req/reply',
  'nats-rr-pg': 'req/reply + 2 commits',
  bullmq: 'BullMQ',
  'pg-inserts': 'raw PostgreSQL inserts',
};

/** The environment of a benchmarked dispatcher: defaults, except limits that would refuse the load. */
export function dispatcherEnv(
  ctx: BenchContext,
  databaseUrl: string,
  extra: Record<string, string> = {},
): Record<string, string> {
  return ctx.serviceEnv(databaseUrl, {
    TOOLBUS_TEST_TOOLS: '1',
    DISPATCHER_ID: 'bench-dispatcher',
    // The benchmark measures dispatch, not the limits: they are checked (same Redis script) but
    // set high enough never to refuse.
    RATE_LIMIT_PER_SEC: '1000000',
    RATE_LIMIT_BURST: '1000000',
    USER_CONCURRENCY: '10000',
    DISPATCH_CONCURRENCY: String(CONCURRENCY),
    ...extra,
  });
}

/** The dispatch workload, on the run's nats-server or another (`nkeySeed`: an agent identity of a secured one). */
export const dispatchWorkload = (ctx: BenchContext, natsUrl = ctx.nats.url, nkeySeed?: string): Workload => ({
  kind: 'dispatch',
  natsUrl,
  jwtSecret: ctx.jwtSecret,
  users: USERS,
  tool: 'noop',
  ...(nkeySeed ? { nkeySeed } : {}),
});

export interface RunSummary {
  system: System;
  rate: number;
  latency: LatencySummary;
  sent: number;
  completed: number;
  errors: number;
  unanswered: number;
  achievedRate: number;
  fellBehind: boolean;
  maxSendLagMs: number;
  firstErrors: string[];
  /** CPU µs per answered request, of the serving process and of nats-server. */
  cpuPerRequestUs?: number | null;
  natsCpuPerRequestUs?: number | null;
  /** Each segment's own percentiles: how much the noise moved between rounds. */
  segments?: Array<Pick<LatencySummary, 'count' | 'p50' | 'p99' | 'max'>>;
}

/**
 * A load generator with its workload set up, the process that serves it (for CPU and memory), and
 * every process whose CPU a request of this lane costs (benchmark 2's CPU per dispatch).
 */
export interface Lane {
  system: System;
  loadgen: Child;
  server: Service | null;
  cost: CostSources;
}

export interface DispatchSetup {
  lanes: Record<BaseSystem, Lane> & Partial<Record<ExtraSystem, Lane>>;
  services: Service[];
  loadgens: Child[];
  databaseUrl: string;
  /** Reads pg_stat_activity for the CPU of PostgreSQL backends. */
  meter: CostMeter;
}

/** A lane's load generator: forked, its workload set up, its own CPU counted in the lane's cost. */
export async function openLane(
  ctx: BenchContext,
  system: System,
  workload: Workload,
  server: Service | null,
  cost: CostSources,
  loadgens: Child[],
): Promise<Lane> {
  const loadgen = await ctx.fork('loadgen.ts', `loadgen-${system}`);
  loadgens.push(loadgen);
  await loadgen.call('setup', workload);
  return {
    system,
    loadgen,
    server,
    cost: { ...cost, processes: [...cost.processes, { role: 'loadgen', pid: () => loadgen.pid }] },
  };
}

export const pidOf =
  (svc: Service): (() => number) =>
  () =>
    svc.started.pid;

export async function setUpDispatch(ctx: BenchContext): Promise<DispatchSetup> {
  const db = await ctx.database();
  const services: Service[] = [];
  const loadgens: Child[] = [];
  const setup = { services, loadgens, databaseUrl: db.url } as DispatchSetup;
  try {
    setup.meter = await CostMeter.open(db.url);
    const dispatcher = await ctx.service('dispatcher', {
      role: 'dispatcher',
      env: dispatcherEnv(ctx, db.url),
    });
    services.push(dispatcher);
    const replier = await ctx.service('replier', {
      role: 'replier',
      natsUrl: ctx.nats.url,
      subject: 'bench.rr.bare',
    });
    services.push(replier);
    const replierPg = await ctx.service('replier-pg', {
      role: 'replier-pg',
      natsUrl: ctx.nats.url,
      databaseUrl: db.url,
      subject: 'bench.rr.pg',
      poolSize: STORE_POOL,
    });
    services.push(replierPg);
    const queue = `bench-${ctx.runId}`;
    const bullmq = await ctx.service('bullmq-worker', {
      role: 'bullmq-worker',
      redisUrl: ctx.redis.url,
      queue,
      concurrency: CONCURRENCY,
    });
    services.push(bullmq);
    const database = databaseOf(db.url);
    const nats = { role: 'nats', pid: () => ctx.nats.pid() } as const;
    const redis = { role: 'redis', pid: () => ctx.redis.pid() } as const;
    const lane = (system: System, workload: Workload, server: Service | null, cost: CostSources) =>
      openLane(ctx, system, workload, server, cost, loadgens);
    setup.lanes = {
      toolbus: await lane('toolbus', dispatchWorkload(ctx), dispatcher, {
        processes: [{ role: 'service', pid: pidOf(dispatcher) }, nats, redis],
        database,
      }),
      'nats-rr': await lane(
        'nats-rr',
        { kind: 'nats-rr', natsUrl: ctx.nats.url, subject: 'bench.rr.bare' },
        replier,
        { processes: [{ role: 'service', pid: pidOf(replier) }, nats], database: null },
      ),
      'nats-rr-pg': await lane(
        'nats-rr-pg',
        { kind: 'nats-rr', natsUrl: ctx.nats.url, subject: 'bench.rr.pg' },
        replierPg,
        { processes: [{ role: 'service', pid: pidOf(replierPg) }, nats], database },
      ),
      bullmq: await lane('bullmq', { kind: 'bullmq', redisUrl: ctx.redis.url, queue }, bullmq, {
        processes: [{ role: 'service', pid: pidOf(bullmq) }, redis],
        database: null,
      }),
      'pg-inserts': await lane(
        'pg-inserts',
        { kind: 'pg-steps', databaseUrl: db.url, poolSize: STORE_POOL },
        null,
        { processes: [], database },
      ),
    };
    return setup;
  } catch (e) {
    await tearDownDispatch(ctx, setup);
    throw e;
  }
}

export async function tearDownDispatch(ctx: BenchContext, s: DispatchSetup): Promise<void> {
  for (const l of s.loadgens) await ctx.stopChild(l);
  for (const svc of s.services) await ctx.stopChild(svc.child);
  await s.meter?.close();
}

/**
 * The lane "Toolbus, 2 dispatchers": two dispatcher processes sharing the intake consumer, on a
 * nats-server and a database of their own (the intake stream and its consumer have fixed names, so
 * a second pair of dispatchers on the first nats-server would also serve the one-dispatcher lane).
 * The returned function stops what it started.
 */
async function twoDispatcherLane(ctx: BenchContext): Promise<{ lane: Lane; stop: () => Promise<void> }> {
  const nats = await ctx.extraNats();
  const services: Service[] = [];
  const loadgens: Child[] = [];
  const stop = async () => {
    for (const l of loadgens) await ctx.stopChild(l);
    for (const svc of services) await ctx.stopChild(svc.child);
    await ctx.stopServer(nats);
  };
  try {
    const db = await ctx.database();
    for (const id of ['a', 'b']) {
      services.push(
        await ctx.service(`dispatcher-2${id}`, {
          role: 'dispatcher',
          env: dispatcherEnv(ctx, db.url, { NATS_URL: nats.url, DISPATCHER_ID: `bench-dispatcher-${id}` }),
        }),
      );
    }
    const lane = await openLane(
      ctx,
      'toolbus-2',
      dispatchWorkload(ctx, nats.url),
      services[0]!,
      {
        processes: [
          ...services.map((svc) => ({ role: 'service' as const, pid: pidOf(svc) })),
          { role: 'nats', pid: () => nats.pid() },
          { role: 'redis', pid: () => ctx.redis.pid() },
        ],
        database: databaseOf(db.url),
      },
      loadgens,
    );
    return { lane, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** Accumulates a system's segments at one rate: merged histogram, summed counts and CPU. */
class Accumulator {
  private readonly h: Histogram = newHistogram();
  private sent = 0;
  private completed = 0;
  private errors = 0;
  private unanswered = 0;
  private recordedRate = 0;
  private readonly segments: Array<Pick<LatencySummary, 'count' | 'p50' | 'p99' | 'max'>> = [];
  private fellBehind = false;
  private maxSendLagMs = 0;
  private cpu = 0;
  private natsCpu = 0;
  private cpuKnown = true;
  private readonly firstErrors: string[] = [];

  constructor(
    private readonly system: System,
    private readonly rate: number,
  ) {}

  add(r: OpenLoopResult, cpu: number | null, natsCpu: number | null): void {
    const h = decodeHistogram(r.histogram);
    this.h.add(h);
    const { count, p50, p99, max } = summarize(h);
    this.segments.push({ count, p50, p99, max });
    this.sent += r.sent;
    this.completed += r.completed;
    this.errors += r.errors;
    this.unanswered += r.unanswered;
    this.recordedRate += r.achievedRate;
    this.fellBehind ||= r.fellBehind;
    this.maxSendLagMs = Math.max(this.maxSendLagMs, r.maxSendLagMs);
    if (cpu === null) this.cpuKnown = false;
    else this.cpu += cpu;
    this.natsCpu += natsCpu ?? 0;
    this.firstErrors.push(...r.firstErrors.slice(0, 5 - this.firstErrors.length));
  }

  summary(): RunSummary {
    return {
      system: this.system,
      rate: this.rate,
      latency: summarize(this.h),
      sent: this.sent,
      completed: this.completed,
      errors: this.errors,
      unanswered: this.unanswered,
      achievedRate: this.segments.length ? this.recordedRate / this.segments.length : 0,
      fellBehind: this.fellBehind,
      maxSendLagMs: this.maxSendLagMs,
      firstErrors: this.firstErrors,
      cpuPerRequestUs: this.cpuKnown && this.completed > 0 ? this.cpu / this.completed : null,
      natsCpuPerRequestUs: this.completed > 0 ? this.natsCpu / this.completed : null,
      segments: this.segments,
    };
  }
}

/** One open-loop run of a lane, with the CPU its server and nats-server used meanwhile. */
async function segment(
  ctx: BenchContext,
  lane: Lane,
  request: RunRequest,
): Promise<{ r: OpenLoopResult; cpu: number | null; natsCpu: number | null }> {
  const natsPid = ctx.nats.pid();
  const n0 = procCpuUs(natsPid);
  const c0 = await lane.server?.cpu();
  const r = await lane.loadgen.call<OpenLoopResult>(
    'run',
    request,
    request.durationMs + request.drainMs + 120_000,
  );
  const c1 = await lane.server?.cpu();
  const n1 = procCpuUs(natsPid);
  // Whatever is still unanswered must not run into the next system's segment.
  if (r.unanswered > 0) await lane.loadgen.call('quiesce', { timeoutMs: 60_000 }, 90_000);
  return { r, cpu: c0 && c1 ? cpuUs(c0, c1) : null, natsCpu: n0 !== null && n1 !== null ? n1 - n0 : null };
}

/** The marks of one segment: the load generator's (and its agent client's) and the server's. */
async function markedSegment(
  ctx: BenchContext,
  lane: Lane,
  rate: number,
): Promise<{ client: Marks; server: Marks }> {
  const serverChild = lane.server!.child;
  await serverChild.call('stepsStart');
  await lane.loadgen.call('stepsStart');
  let client: Marks;
  let served: Marks;
  try {
    await segment(ctx, lane, {
      rate,
      durationMs: ctx.d.latencySegmentMs,
      warmupMs: 0,
      drainMs: 15_000,
      maxOutstanding: Math.max(1_000, rate * 10),
      tag: `${ctx.runId}-steps${rate}`,
    });
  } finally {
    client = await lane.loadgen.call<Marks>('stepsTake');
    served = await serverChild.call<Marks>('stepsTake');
  }
  // As the latency segments: their first seconds are not counted.
  const kept = afterWarmup(client, 'fired', ctx.d.latencySegmentWarmupMs);
  const server = Object.fromEntries(Object.keys(kept).flatMap((k) => (served[k] ? [[k, served[k]]] : [])));
  return { client: kept, server };
}

/**
 * Benchmark 1b: one more segment of Toolbus and of the commit reference at each load, with the
 * marks of lib/diagnostics.ts recorded (the latency segments run with no one listening): the p50
 * of each step, beside the reference's same step where it has one.
 */
async function dispatchSteps(
  ctx: BenchContext,
  s: DispatchSetup,
): Promise<{ table: Table; notes: string[]; details: Record<string, unknown> }> {
  const columns: Array<{
    rate: number;
    t: { client: Marks; server: Marks };
    ref: { client: Marks; server: Marks };
  }> = [];
  for (const rate of LOADS) {
    const t = await markedSegment(ctx, s.lanes.toolbus, rate);
    const ref = await markedSegment(ctx, s.lanes['nats-rr-pg'], rate);
    columns.push({ rate, t, ref });
  }
  const ms = (v: number | null) => (v === null ? '—' : v.toFixed(3));
  const inside: [string, string] = ['received', 'answered'];
  const total: [string, string] = ['fired', 'resolved'];
  const rows: Array<[string, (x: { client: Marks; server: Marks }, toolbus: boolean) => number | null]> = [
    [
      'JetStream publish, acknowledged (agent client: sent → stored)',
      (x, tb) => (tb ? spanP50([x.client], 'sent', 'stored') : null),
    ],
    [
      'outside the dispatcher / replier: intake or request, and answer, in transit (total − inside)',
      (x) => outsideP50(x.client, x.server, total, inside),
    ],
    [
      'token check and Redis admission (received → admitted)',
      (x, tb) => (tb ? spanP50([x.server], 'received', 'admitted') : null),
    ],
    [
      'first commit: ToolRequested + ToolExecuting (admitted → recorded; reference: received → recorded)',
      (x, tb) => spanP50([x.server], tb ? 'admitted' : 'received', 'recorded'),
    ],
    ['the tool, noop (recorded → ran)', (x, tb) => (tb ? spanP50([x.server], 'recorded', 'ran') : null)],
    [
      'second commit: ToolCompleted (ran → completed; reference: recorded → completed)',
      (x, tb) => spanP50([x.server], tb ? 'ran' : 'recorded', 'completed'),
    ],
    ['answer published (completed → answered)', (x) => spanP50([x.server], 'completed', 'answered')],
    ['inside the dispatcher / replier (received → answered)', (x) => spanP50([x.server], ...inside)],
    [
      'total (fired → answer; the latency figures start at the due time, up to the send lag earlier)',
      (x) => spanP50([x.client], ...total),
    ],
  ];
  const table: Table = {
    title: "1b. Where a dispatch's time goes (p50 of each step, ms)",
    header: [
      'step',
      ...columns.flatMap((c) => [`Toolbus @ ${c.rate}/s`, `req/reply + 2 commits @ ${c.rate}/s`]),
    ],
    rows: rows.map(([name, f]) => [name, ...columns.flatMap((c) => [ms(f(c.t, true)), ms(f(c.ref, false))])]),
  };
  const counted = columns
    .map((c) => `${Object.keys(c.t.client).length} and ${Object.keys(c.ref.client).length} at ${c.rate}/s`)
    .join(', ');
  return {
    table,
    notes: [
      `1b: one more segment per load of Toolbus and of the commit reference (${ctx.d.latencySegmentMs / 1000} s, the first ` +
        `${ctx.d.latencySegmentWarmupMs / 1000} s not counted; ${counted} requests), with each process recording its marks: ` +
        "the dispatcher's and the agent client's from lib/diagnostics.ts (Node's diagnostics channels, silent while no one " +
        "listens, as in the latency segments above), the reference replier's around its two commits. A row is the p50 of that " +
        'step alone, so the rows do not add up to the total. Marks of two processes are never subtracted from each other: ' +
        '"outside" is, per request, the load generator\'s total minus the time inside the server.',
    ],
    details: Object.fromEntries(
      columns.map((c) => [
        c.rate,
        Object.fromEntries(
          rows.map(([name, f]) => [name, { toolbus: f(c.t, true), reference: f(c.ref, false) }]),
        ),
      ]),
    ),
  };
}

/** Benchmarks 1 and 6: latency at the two loads, and CPU per request, for Toolbus and both repliers. */
export async function dispatchLatency(
  ctx: BenchContext,
  s: DispatchSetup,
): Promise<{ latency: BenchResult; cpu: BenchResult }> {
  const started = performance.now();
  const runs: RunSummary[] = [];
  const systems: BaseSystem[] = ['nats-rr', 'nats-rr-pg', 'toolbus'];
  for (const rate of LOADS) {
    const acc = new Map(systems.map((sys) => [sys, new Accumulator(sys, rate)]));
    for (let round = 0; round < ctx.d.latencyRounds; round++) {
      // Rotate who goes first, so that none of them always follows the same neighbour.
      for (let k = 0; k < systems.length; k++) {
        const system = systems[(k + round) % systems.length]!;
        const { r, cpu, natsCpu } = await segment(ctx, s.lanes[system], {
          rate,
          durationMs: ctx.d.latencySegmentMs,
          warmupMs: ctx.d.latencySegmentWarmupMs,
          drainMs: 15_000,
          maxOutstanding: Math.max(1_000, rate * 10),
          tag: `${ctx.runId}-lat${rate}-${round}`,
        });
        acc.get(system)!.add(r, cpu, natsCpu);
      }
    }
    for (const sys of systems) {
      const summary = acc.get(sys)!.summary();
      runs.push(summary);
      ctx.log(
        `${sys} @ ${rate}/s: p50 ${summary.latency.p50} ms, p99 ${summary.latency.p99} ms, p99.9 ${summary.latency.p999} ms, ` +
          `${summary.completed}/${summary.sent} answered, ${summary.errors} errors, ${summary.cpuPerRequestUs?.toFixed(0)} µs CPU/req`,
      );
    }
  }
  const find = (system: System, rate: number) => runs.find((r) => r.system === system && r.rate === rate);
  const ok = (r: RunSummary | undefined) => (r && r.errors === 0 && r.unanswered === 0 ? r : undefined);
  const recordedS = (ctx.d.latencyRounds * (ctx.d.latencySegmentMs - ctx.d.latencySegmentWarmupMs)) / 1000;

  const latency: BenchResult = {
    id: 'dispatch-latency',
    title: '1. Dispatch latency (noop)',
    figures: [],
    targets: [],
    notes: [
      `Open loop at ${LOADS.join(' and ')} requests/s over ${USERS} users, from the intended send time to the terminal answer. ` +
        `${ctx.d.latencyRounds} round(s) per load; each round runs every system for ${ctx.d.latencySegmentMs / 1000} s in turn ` +
        `(the first ${ctx.d.latencySegmentWarmupMs / 1000} s not recorded): ${recordedS} s recorded per system and load.`,
      'Toolbus: agent client `execute` (JetStream publish, answer on an inbox) → dispatcher → 2 appends (2 PostgreSQL commits, synchronous_commit on) → answer.',
      'Reference "NATS req/reply": core NATS request to a replier that does nothing. Reference "req/reply + 2 commits": the same replier ' +
        "inserting the execution's event rows in 2 transactions (synchronous_commit on, 10 connections) before it replies: the dispatcher's commits, nothing else.",
      'Benchmark 7 splits the gap between Toolbus and the commit reference into its pieces.',
    ],
    details: { runs },
    seconds: 0,
  };
  for (const rate of LOADS) {
    const t = ok(find('toolbus', rate));
    const bare = ok(find('nats-rr', rate));
    const pg = ok(find('nats-rr-pg', rate));
    for (const [label, key] of [
      ['p50', 'p50'],
      ['p99', 'p99'],
      ['p99.9', 'p999'],
    ] as const) {
      latency.figures.push(
        figure(`${label} @ ${rate}/s`, 'ms', t?.latency[key] ?? null, {
          name: 'req/reply + 2 commits',
          value: pg?.latency[key] ?? null,
        }),
        figure(`${label} @ ${rate}/s`, 'ms', t?.latency[key] ?? null, {
          name: 'NATS req/reply',
          value: bare?.latency[key] ?? null,
        }),
      );
    }
    latency.targets.push(
      target(
        `p50 @ ${rate}/s within 1 ms of req/reply + 2 commits`,
        'ms',
        t?.latency.p50 ?? null,
        pg ? pg.latency.p50 + 1 : null,
        'lower',
      ),
      target(
        `p99 @ ${rate}/s within 2× req/reply + 2 commits`,
        'ms',
        t?.latency.p99 ?? null,
        pg ? pg.latency.p99 * 2 : null,
        'lower',
      ),
    );
    const p99s = (r: RunSummary | undefined) => r?.segments?.map((x) => x.p99).join(', ') ?? 'n/a';
    latency.notes.push(
      `p99 of each segment at ${rate}/s (ms), in round order — Toolbus: ${p99s(find('toolbus', rate))}; req/reply + 2 commits: ${p99s(find('nats-rr-pg', rate))}; ` +
        `NATS req/reply: ${p99s(find('nats-rr', rate))}. One stalled segment (the shared PostgreSQL, the disk) sets the merged p99.`,
    );
    for (const [name, r] of [
      ['Toolbus', t],
      ['NATS req/reply', bare],
      ['req/reply + 2 commits', pg],
    ] as const) {
      if (!r)
        latency.notes.push(
          `${name} at ${rate}/s had errors or unanswered requests (see latest.json): its figures are left out.`,
        );
    }
  }
  const steps = await dispatchSteps(ctx, s);
  latency.tables = [...(latency.tables ?? []), steps.table];
  latency.notes.push(...steps.notes);
  latency.details['steps'] = steps.details;
  latency.seconds = (performance.now() - started) / 1000;

  const cpu: BenchResult = {
    id: 'cpu',
    title: '6. CPU per dispatch',
    figures: [],
    targets: [],
    notes: [
      "process.cpuUsage() (user + system, all threads) of the serving process over benchmark 1's segments, warm-up and drain included, divided by the requests it answered.",
      "The dispatcher's figure is its own process only: NATS, PostgreSQL and Redis work elsewhere. nats-server's CPU per request (from /proc, 10 ms resolution) is in latest.json.",
    ],
    details: {
      runs: runs.map((r) => ({
        system: r.system,
        rate: r.rate,
        cpuPerRequestUs: r.cpuPerRequestUs,
        natsCpuPerRequestUs: r.natsCpuPerRequestUs,
      })),
    },
    seconds: 0,
  };
  for (const rate of LOADS) {
    const t = find('toolbus', rate);
    cpu.figures.push(
      figure(`CPU per dispatch @ ${rate}/s`, 'µs', t?.cpuPerRequestUs ?? null, {
        name: 'NATS replier',
        value: find('nats-rr', rate)?.cpuPerRequestUs ?? null,
      }),
      figure(`CPU per dispatch @ ${rate}/s`, 'µs', t?.cpuPerRequestUs ?? null, {
        name: 'replier + 2 commits',
        value: find('nats-rr-pg', rate)?.cpuPerRequestUs ?? null,
      }),
    );
  }
  return { latency, cpu };
}

export interface StepSummary extends RunSummary {
  pass: boolean;
  why: string;
  /** What failed the step: the system, or the load generator that could not send on time. */
  boundBy: 'system' | 'generator' | null;
  /** CPU of the serving process(es) over the step, in cores (1 = one core busy all the time). */
  serverCores: number | null;
  /** CPU of the load generator over the step, in cores. */
  loadgenCores: number | null;
  /** CPU µs of each process role over the step (warm-up and drain included; proc.ts). */
  cpuUs: Cost;
}

/**
 * A step's verdict, and who failed it. What only the system can cause comes first (errors, requests
 * left unanswered, a p99 over the bound by more than the generator's worst lateness: a request sent
 * L ms late is measured from when it was due, so at most L of its latency is the generator's). Then
 * a generator that sent later than `maxSendLagMs`: it cannot say whether the system kept up (its
 * lateness is in the latencies, and the load it offered came in bursts), so the step fails on it.
 */
function judge(
  r: RunSummary,
  maxSendLagMs: number,
  loadgenCores: number | null,
): { pass: boolean; why: string; boundBy: StepSummary['boundBy'] } {
  const system = (why: string) => ({ pass: false, why, boundBy: 'system' as const });
  if (r.fellBehind) return system('fell behind (too many unanswered)');
  if (r.errors > 0) return system(`${r.errors} errors`);
  if (r.unanswered > 0) return system(`${r.unanswered} unanswered after the drain`);
  if (r.latency.p99 - r.maxSendLagMs > P99_BOUND_MS)
    return system(`p99 ${r.latency.p99} ms (send lag ${r.maxSendLagMs.toFixed(0)} ms)`);
  if (r.maxSendLagMs > maxSendLagMs)
    return {
      pass: false,
      why:
        `load generator sent up to ${r.maxSendLagMs.toFixed(0)} ms late (over ${maxSendLagMs} ms` +
        (loadgenCores === null
          ? ')'
          : `; its CPU ${loadgenCores.toFixed(2)} cores: ${loadgenCores >= SATURATED_CORES ? 'saturated' : 'held up by the machine, not by its own work'})`),
      boundBy: 'generator',
    };
  if (r.achievedRate < r.rate * 0.95) return system(`achieved ${r.achievedRate.toFixed(0)}/s`);
  if (r.latency.p99 > P99_BOUND_MS) return system(`p99 ${r.latency.p99} ms`);
  return { pass: true, why: 'ok', boundBy: null };
}

export interface Ladder {
  system: System;
  max: number | null;
  steps: StepSummary[];
  /** Still passing at the safety cap (`maxRate`): the figure is a lower bound. */
  capped: boolean;
  /**
   * What ended the ladder: the system failing, the load generator failing (the figure is then a
   * lower bound of the system's), or the cap.
   */
  endedBy: 'system' | 'generator' | 'cap' | null;
  /** Failed rates in a row. */
  failures: number;
  done: boolean;
}

/** Why a ladder's figure is not the system's own limit, in words; null when it is. */
export function lowerBound(l: Ladder, maxRate: number): string | null {
  if (l.capped)
    return `${SYSTEM_NAMES[l.system]} still passed at the safety cap of ${maxRate}/s: its figure is a lower bound`;
  if (l.endedBy === 'generator')
    return (
      `The ladder of ${SYSTEM_NAMES[l.system]} ended because its load generator could not send on time (send lag over the bound), ` +
      'not because the system failed: its figure is a lower bound, set by the generator (or by the machine under it: see its CPU in the step)'
    );
  return null;
}

async function step(
  ctx: BenchContext,
  s: DispatchSetup,
  lane: Lane,
  ladder: Ladder,
  rate: number,
  tag: string,
): Promise<boolean> {
  const before = await s.meter.sample(lane.cost);
  const t0 = performance.now();
  const r = await lane.loadgen.call<OpenLoopResult>(
    'run',
    {
      rate,
      durationMs: ctx.d.stepMs,
      warmupMs: ctx.d.stepWarmupMs,
      drainMs: 5_000,
      maxOutstanding: Math.max(200, Math.round(rate * 2)),
      tag,
    } satisfies RunRequest,
    ctx.d.stepMs + 60_000,
  );
  const elapsedMs = performance.now() - t0;
  const cpuUs = CostMeter.between(before, await s.meter.sample(lane.cost));
  const cores = (us: number | null) => (us === null ? null : us / 1000 / elapsedMs);
  const serverCores = cores(cpuUs.service);
  const loadgenCores = cores(cpuUs.loadgen);
  const acc = new Accumulator(lane.system, rate);
  acc.add(r, null, null);
  const summary = acc.summary();
  const verdict = judge(summary, ctx.d.maxSendLagMs, loadgenCores);
  ladder.steps.push({ ...summary, ...verdict, serverCores, loadgenCores, cpuUs });
  ctx.log(
    `${lane.system} step ${rate}/s: ${verdict.pass ? 'pass' : 'FAIL'} (p99 ${summary.latency.p99} ms, achieved ${summary.achievedRate.toFixed(0)}/s` +
      `${serverCores === null ? '' : `, server ${serverCores.toFixed(2)} cores`}, send lag ${summary.maxSendLagMs.toFixed(0)} ms` +
      `${verdict.pass ? '' : `: ${verdict.why}`})`,
  );
  // After a failure, let what is still queued drain before anything else runs.
  if (!verdict.pass) {
    await lane.loadgen.call('quiesce', { timeoutMs: 60_000 }, 90_000);
    await sleep(1_000);
  }
  return verdict.pass;
}

/** Climbs started in this process (each names its requests apart). */
let climbs = 0;

/**
 * The ladders of benchmark 2 for `systems`, stepped together (see `dispatchThroughput`): each rate
 * is run by every system still climbing before the next rate. A ladder ends when its system fails
 * `failedRatesToStop` rates in a row, or at the safety cap `maxRate` (then its figure is a lower
 * bound, `capped`).
 */
export async function climb(
  ctx: BenchContext,
  s: DispatchSetup,
  lanes: Lane[],
  /**
   * Skip the ladder's rates below this one (the highest ladder rate at or under it is the first
   * step): for a ladder whose systems are known to pass the low rates. The rates stay those of the
   * full ladder, so that figures compare with benchmark 2's.
   */
  from = ctx.d.firstRate,
): Promise<Map<System, Ladder>> {
  const ladders = new Map<System, Ladder>(
    lanes.map(({ system }) => [
      system,
      { system, max: null, steps: [], capped: false, endedBy: null, failures: 0, done: false },
    ]),
  );
  // Request ids are unique to each climb: benchmark 2c climbs the single-node lane again, and its
  // steps must not be answered from what benchmark 2's steps left in the dispatcher's Redis.
  const climb = `${ctx.runId}-tp${++climbs}`;
  let rate = ctx.d.firstRate;
  while (rate * ctx.d.stepFactor <= from) rate *= ctx.d.stepFactor;
  for (let k = 0; [...ladders.values()].some((l) => !l.done); k++, rate *= ctx.d.stepFactor) {
    const r = Math.round(rate);
    const last = Math.round(rate * ctx.d.stepFactor) > ctx.d.maxRate;
    for (const lane of lanes) {
      const ladder = ladders.get(lane.system)!;
      if (ladder.done) continue;
      const tag = `${climb}-${lane.system}-${k}`;
      let passed = await step(ctx, s, lane, ladder, r, tag);
      if (!passed && ctx.d.retryStep) passed = await step(ctx, s, lane, ladder, r, `${tag}r`);
      if (passed) {
        ladder.max = r;
        ladder.failures = 0;
        if (last) {
          ladder.capped = true;
          ladder.endedBy = 'cap';
          ladder.done = true;
        }
        continue;
      }
      ladder.endedBy = ladder.steps.at(-1)!.boundBy;
      if (++ladder.failures < ctx.d.failedRatesToStop && !last) continue;
      ladder.done = true;
      if (ladder.max !== null) continue;
      // Not even the first rate: look below it.
      ladder.max = 0;
      for (let down = Math.round(r / 2); down >= FLOOR_RATE; down = Math.round(down / 2)) {
        if (await step(ctx, s, lane, ladder, down, `${climb}-${lane.system}-d${down}`)) {
          ladder.max = down;
          break;
        }
      }
    }
  }
  return ladders;
}

/**
 * Toolbus's highest sustained rate by benchmark 2's ladder, Toolbus alone (the overload benchmark's
 * reference when benchmark 2 is not run).
 */
export async function toolbusCapacity(ctx: BenchContext, s: DispatchSetup): Promise<Ladder> {
  return (await climb(ctx, s, [s.lanes.toolbus])).get('toolbus')!;
}

/** The rows of the "CPU per dispatch" table: each process role, as the report names it. */
export const COST_LABELS: Record<CostRole | CostExtra, string> = {
  service: 'dispatcher(s) / BullMQ worker',
  nats: 'nats-server',
  postgres: "PostgreSQL backends of the lane's database",
  redis: 'redis-server',
  loadgen: 'load generator',
  postgresServer: 'PostgreSQL, every process in pg_stat_activity (not in the total)',
  proxies: "the test cluster's TCP proxies, in the bench runner (not in the total)",
};

export interface CostAtRate {
  system: System;
  rate: number;
  pass: boolean;
  completed: number;
  /** CPU ms per completed request, by process role; null: the role takes no part (or unreadable). */
  msPerDispatch: Record<CostRole | CostExtra, number | null>;
  /** The sum of the roles, `postgresServer` left out. */
  totalMs: number;
}

/**
 * CPU per completed request of each system at one rate of the ladder (mid-ladder: the step nearest
 * half of Toolbus's figure, which every system climbed), from the step's /proc samples.
 */
export function costsAt(ladders: Ladder[], rate: number): CostAtRate[] {
  const out: CostAtRate[] = [];
  for (const l of ladders) {
    // Every system climbs the same rates; one that stopped below `rate` is taken at its nearest.
    const own = nearest(
      l.steps.map((x) => x.rate),
      rate,
    );
    const atRate = l.steps.filter((x) => x.rate === own);
    const st = atRate.find((x) => x.pass) ?? atRate[0];
    if (!st || st.completed === 0) continue;
    const ms = (us: number | null) => (us === null ? null : us / 1000 / st.completed);
    const msPerDispatch = {
      service: ms(st.cpuUs.service),
      nats: ms(st.cpuUs.nats),
      postgres: ms(st.cpuUs.postgres),
      redis: ms(st.cpuUs.redis),
      loadgen: ms(st.cpuUs.loadgen),
      postgresServer: ms(st.cpuUs.postgresServer),
      proxies: ms(st.cpuUs.proxies),
    };
    const totalMs = COST_ROLES.reduce((sum, role) => sum + (msPerDispatch[role] ?? 0), 0);
    out.push({ system: l.system, rate: own, pass: st.pass, completed: st.completed, msPerDispatch, totalMs });
  }
  return out;
}

/** The value of `values` nearest to `to` (`to` itself when there are none). */
const nearest = (values: number[], to: number): number =>
  values.reduce((best, v) => (Math.abs(v - to) < Math.abs(best - to) ? v : best), values[0] ?? to);

/** The ladder's rate nearest to half of its figure (the first rate when there is no figure). */
export function midRate(ladder: Ladder, first: number): number {
  if (!ladder.max) return first;
  return nearest(
    ladder.steps.map((x) => x.rate),
    ladder.max / 2,
  );
}

/** The "CPU per dispatch (ms)" table: a row per process role, a column per system. */
export function costsTable(rate: number, costs: CostAtRate[]): Table {
  const extras = (['postgresServer', 'proxies'] as const).filter((role) =>
    costs.some((c) => c.msPerDispatch[role] !== null),
  );
  return {
    title: `CPU per dispatch (ms) at ${rate}/s`,
    header: [
      'process',
      ...costs.map(
        (c) =>
          `${SYSTEM_NAMES[c.system]}${c.rate === rate ? '' : ` (at ${c.rate}/s)`}${c.pass ? '' : ' (step failed)'}`,
      ),
    ],
    rows: [
      ...COST_ROLES.map((role) => [COST_LABELS[role], ...costs.map((c) => cell(c.msPerDispatch[role]))]),
      ['**total**', ...costs.map((c) => `**${c.totalMs.toFixed(3)}**`)],
      ...extras.map((role) => [COST_LABELS[role], ...costs.map((c) => cell(c.msPerDispatch[role]))]),
    ],
  };
}

export const cell = (v: number | null): string => (v === null ? '—' : v.toFixed(3));

/** How many entries of each ranking the dispatcher's profile tables show. */
const PROFILE_TOP = 12;

export interface DispatcherProfile {
  rate: number;
  completed: number;
  /** The dispatcher's process.cpuUsage over the step: every thread, the kernel's work for it included (µs). */
  processUs: number | null;
  summary: ProfileSummary;
}

/**
 * Benchmark 2's profile of the dispatcher: one more step of the Toolbus lane at `rate`, with the
 * dispatcher's main thread sampled by V8 (node:inspector in bench/server.ts) over it, warm-up and
 * drain included as in the CPU table.
 */
async function profileDispatcher(ctx: BenchContext, lane: Lane, rate: number): Promise<DispatcherProfile> {
  const child = lane.server!.child;
  await child.call('profileStart');
  let run: Awaited<ReturnType<typeof segment>>;
  try {
    run = await segment(ctx, lane, {
      rate,
      durationMs: ctx.d.stepMs,
      warmupMs: ctx.d.stepWarmupMs,
      drainMs: 5_000,
      maxOutstanding: Math.max(200, Math.round(rate * 2)),
      tag: `${ctx.runId}-profile`,
    });
  } catch (e) {
    await child.call('profileTake', { top: 0 }).catch(() => undefined);
    throw e;
  }
  const summary = await child.call<ProfileSummary>('profileTake', { top: PROFILE_TOP });
  ctx.log(
    `dispatcher profile at ${rate}/s: ${run.r.completed} answered, ${(summary.busyUs / 1000).toFixed(0)} ms busy`,
  );
  return { rate, completed: run.r.completed, processUs: run.cpu, summary };
}

/** The two tables of the dispatcher's profile: self time by file or package, and by function. */
export function profileTables(p: DispatcherProfile): Table[] {
  const per = (us: number) => (p.completed > 0 ? (us / p.completed).toFixed(1) : '—');
  const share = (us: number) => `${((100 * us) / p.summary.busyUs).toFixed(1)}%`;
  const rows = (ranked: Ranked) =>
    ranked.map(([name, us]) => [`\`${name.replaceAll('|', '\\|')}\``, share(us), per(us)]);
  const totals = [
    ['**main thread, not idle** (the profile)', '100%', `**${per(p.summary.busyUs)}**`],
    ...(p.processUs === null ? [] : [['process, every thread (process.cpuUsage)', '—', per(p.processUs)]]),
  ];
  const about = `at ${p.rate}/s (V8 sampling profile of the dispatcher's main thread, one more step)`;
  return [
    {
      title: `Where the dispatcher's CPU goes, by file or package, ${about}`,
      header: ['self time in', 'share', 'µs per dispatch'],
      rows: [...rows(p.summary.byFile), ...totals],
    },
    {
      title: `Where the dispatcher's CPU goes, by function, ${about}`,
      header: ['self time in', 'share', 'µs per dispatch'],
      rows: [...rows(p.summary.byFunction), ...totals],
    },
  ];
}

/**
 * Benchmark 2: each system's offered rate steps up (×stepFactor) until it fails: a failed step is
 * run once more (full mode), and a system stops after `failedRatesToStop` failed rates in a row;
 * `maxRate` is only a safety cap. The figure is the highest rate that passed. All systems take each
 * rate in turn before the next rate. A system that passes no rate steps down from the first (÷2 to
 * FLOOR_RATE): its figure is then the rate that passed there, or 0. Beside one dispatcher, the lane
 * "2 dispatchers" (two processes sharing the intake consumer) climbs the same rates.
 */
export async function dispatchThroughput(
  ctx: BenchContext,
  s: DispatchSetup,
): Promise<BenchResult & { max: number | null }> {
  const started = performance.now();
  let two: Awaited<ReturnType<typeof twoDispatcherLane>> | null = null;
  let twoError: string | null = null;
  try {
    two = await twoDispatcherLane(ctx);
  } catch (e) {
    // The other lanes still climb; the missing figure makes the run incomplete (exit status 1).
    twoError = e instanceof Error ? e.message : String(e);
    ctx.log(`2 dispatchers: set-up failed: ${twoError}`);
  }
  const lanes = [s.lanes.toolbus, ...(two ? [two.lane] : []), s.lanes.bullmq, s.lanes['pg-inserts']];
  let ladders: Map<System, Ladder>;
  try {
    ladders = await climb(ctx, s, lanes);
  } finally {
    await two?.stop();
  }
  const toolbus = ladders.get('toolbus')!;
  const toolbus2 = ladders.get('toolbus-2') ?? null;
  const bullmq = ladders.get('bullmq')!;
  const inserts = ladders.get('pg-inserts')!;
  const all = [toolbus, ...(toolbus2 ? [toolbus2] : []), bullmq, inserts];

  const bounded = all.map((l) => ({ l, why: lowerBound(l, ctx.d.maxRate) })).filter((x) => x.why !== null);
  const boundNote = (...ls: Array<Ladder | null>) => {
    const names = ls.filter((l) => l && lowerBound(l, ctx.d.maxRate)).map((l) => SYSTEM_NAMES[l!.system]);
    return names.length ? `lower bound for ${names.join(' and ')}, see the notes` : undefined;
  };
  const bullmqName = 'BullMQ add + worker + waitUntilFinished';

  const rate = midRate(toolbus, ctx.d.firstRate);
  const costs = costsAt(all, rate);
  const costTable = costsTable(rate, costs);
  // A profile is an explanation, not a figure: a run without it is still complete.
  let profile: DispatcherProfile | null = null;
  try {
    profile = await profileDispatcher(ctx, s.lanes.toolbus, rate);
  } catch (e) {
    ctx.log(`dispatcher profile failed: ${e instanceof Error ? e.message : String(e)}`);
  }
  const coresNote = (l: Ladder | null, name: string) =>
    l ? `${name}: ${l.steps.map((x) => `${x.rate}/s ${x.serverCores?.toFixed(2) ?? '?'}`).join(', ')}` : null;

  return {
    id: 'dispatch-throughput',
    title: `2. Sustained dispatch throughput (p99 ≤ ${P99_BOUND_MS} ms)`,
    max: toolbus.max,
    figures: [
      figure(
        'highest sustained rate',
        'req/s',
        toolbus.max,
        { name: bullmqName, value: bullmq.max },
        boundNote(toolbus, bullmq),
      ),
      figure(
        'highest sustained rate',
        'req/s',
        toolbus.max,
        { name: 'raw PostgreSQL inserts, 2 commits per execution', value: inserts.max },
        boundNote(toolbus, inserts),
      ),
      figure(
        'highest sustained rate, 2 dispatchers',
        'req/s',
        toolbus2?.max ?? null,
        { name: bullmqName, value: bullmq.max },
        boundNote(toolbus2, bullmq),
      ),
      figure(
        'highest sustained rate, 2 dispatchers',
        'req/s',
        toolbus2?.max ?? null,
        { name: 'Toolbus, 1 dispatcher', value: toolbus.max },
        boundNote(toolbus2, toolbus),
      ),
    ],
    targets: [
      target('throughput at least that of the BullMQ round trip', 'req/s', toolbus.max, bullmq.max, 'higher'),
      target(
        'throughput with 2 dispatchers at least that of the BullMQ round trip',
        'req/s',
        toolbus2?.max ?? null,
        bullmq.max,
        'higher',
      ),
    ],
    tables: [costTable, ...(profile ? profileTables(profile) : [])],
    notes: [
      `Offered rate stepped from ${ctx.d.firstRate}/s by ×${ctx.d.stepFactor} until each system fails, ${ctx.d.stepMs / 1000} s per step (${ctx.d.stepWarmupMs / 1000} s warm-up), ` +
        `the systems in turn at each rate (${all.map((l) => SYSTEM_NAMES[l.system]).join(', ')}). ` +
        `A step passes when the load generator sent every request within ${ctx.d.maxSendLagMs} ms of when it was due, p99 ≤ ${P99_BOUND_MS} ms, every request is answered and the achieved rate is at least 95% of the offered one` +
        `${ctx.d.retryStep ? '; a failed step is run once more' : ''}; a system stops after ${ctx.d.failedRatesToStop} failed rate(s) in a row, ` +
        `or at the safety cap of ${ctx.d.maxRate}/s. ` +
        `The figure is the highest rate that passed (when no rate passes, the first rate is halved down to ${FLOOR_RATE}/s; 0 means none passed).`,
      ...all.map(
        (l) =>
          `${SYSTEM_NAMES[l.system]}: ${l.max}/s; ended by ${l.endedBy === 'cap' ? 'the safety cap' : l.endedBy === 'generator' ? 'the load generator' : 'the system failing'}` +
          `${l.steps.at(-1)?.pass === false ? ` (last step ${l.steps.at(-1)!.rate}/s: ${l.steps.at(-1)!.why})` : ''}.`,
      ),
      ...bounded.map((x) => `${x.why}.`),
      `2 dispatchers: two dispatcher processes (DISPATCHER_ID a and b) sharing the intake consumer, on a nats-server and a database of their own, same settings as the one dispatcher; ` +
        'on this machine they share its two cores with everything else.' +
        (twoError ? ` Not measured: its set-up failed (${twoError}).` : ''),
      `BullMQ: Queue.add, a Worker (concurrency ${CONCURRENCY}) that does nothing, job.waitUntilFinished through QueueEvents, on the run's own Redis. ` +
        'Durability is not equal: that Redis keeps nothing on disk (no RDB, no AOF), so a BullMQ job is not durable at all, while each Toolbus execution is committed to PostgreSQL twice.',
      `Raw inserts: the same event rows, one insert transaction per execution step (2 commits per execution), ${STORE_POOL} connections (the event store's pool), synchronous_commit on.`,
      `CPU per dispatch: user + system CPU from /proc/<pid>/stat (10 ms ticks) of each process the lane uses, over the whole step at ${rate}/s (the rate nearest half of ` +
        "Toolbus's figure; warm-up and drain included), divided by the requests completed in it. PostgreSQL: the backends pg_stat_activity lists for the lane's database " +
        "(the dispatcher's pool and its listener; a backend that closed during the step is missed); the last row is every PostgreSQL process pg_stat_activity lists " +
        `(background writers included${ctx.ownPostgres ? '' : "; on the shared server, other databases' work too"}). Redis is the run's own; BullMQ's worker is in the first row. Every step's samples are in latest.json. ` +
        "Each row includes the process's idle work over the step (timers, heartbeats, JetStream pulls, pool keep-alives): at a few dozen requests per second it dominates, so read the table at hundreds per second.",
      ...(profile
        ? [
            `The dispatcher's profile: one more step of the Toolbus lane at ${rate}/s after the ladders, its main thread sampled every 0.5 ms by V8 (node:inspector), ` +
              `${profile.completed} dispatches answered. Self time: a function's own work, not its callees'; "(native)" is C++ called from JavaScript (the stream writes, to sockets, among it), ` +
              '"(garbage collector)" and "(program)" are V8\'s. The last rows: the main thread\'s busy time, and every thread of the process as the kernel counts it ' +
              "(garbage collection helpers and libuv's threads included). `npx tsx bench/cpu-dispatch.ts` with BENCH_PROFILE=dispatcher writes a whole profile to open in a viewer.",
          ]
        : ["The dispatcher's profile failed (see the progress lines)."]),
      `CPU of the serving process(es) per step (cores, from /proc) — ${[
        coresNote(toolbus, 'dispatcher'),
        coresNote(toolbus2, '2 dispatchers together'),
        coresNote(bullmq, 'BullMQ worker'),
      ]
        .filter((x) => x !== null)
        .join('; ')}. A Node.js process cannot use more than about one core for its JavaScript.`,
    ],
    details: {
      toolbus,
      toolbus2,
      bullmq,
      inserts,
      cpuPerDispatch: { rate, systems: costs },
      profile,
    },
    seconds: (performance.now() - started) / 1000,
  };
}
