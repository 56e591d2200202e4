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
import { procCpuUs } from '../lib/proc.ts';
import { figure, target, type BenchResult } from '../lib/report.ts';

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
/** The ladder's lowest rate when even its first step fails. */
const FLOOR_RATE = 5;

type System = 'toolbus' | 'nats-rr' | 'nats-rr-pg' | 'bullmq' | 'pg-inserts';

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

export const dispatchWorkload = (ctx: BenchContext): Workload => ({
  kind: 'dispatch',
  natsUrl: ctx.nats.url,
  jwtSecret: ctx.jwtSecret,
  users: USERS,
  tool: 'noop',
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

/** A load generator with its workload set up, and the process that serves it (for CPU). */
interface Lane {
  system: System;
  loadgen: Child;
  server: Service | null;
}

export interface DispatchSetup {
  lanes: Record<System, Lane>;
  services: Service[];
  loadgens: Child[];
  databaseUrl: string;
}

export async function setUpDispatch(ctx: BenchContext): Promise<DispatchSetup> {
  const db = await ctx.database();
  const services: Service[] = [];
  const loadgens: Child[] = [];
  const setup = { services, loadgens, databaseUrl: db.url } as DispatchSetup;
  try {
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
    const lane = async (system: System, workload: Workload, server: Service | null): Promise<Lane> => {
      const loadgen = await ctx.fork('loadgen.ts', `loadgen-${system}`);
      loadgens.push(loadgen);
      await loadgen.call('setup', workload);
      return { system, loadgen, server };
    };
    setup.lanes = {
      toolbus: await lane('toolbus', dispatchWorkload(ctx), dispatcher),
      'nats-rr': await lane(
        'nats-rr',
        { kind: 'nats-rr', natsUrl: ctx.nats.url, subject: 'bench.rr.bare' },
        replier,
      ),
      'nats-rr-pg': await lane(
        'nats-rr-pg',
        { kind: 'nats-rr', natsUrl: ctx.nats.url, subject: 'bench.rr.pg' },
        replierPg,
      ),
      bullmq: await lane('bullmq', { kind: 'bullmq', redisUrl: ctx.redis.url, queue }, bullmq),
      'pg-inserts': await lane(
        'pg-inserts',
        { kind: 'pg-steps', databaseUrl: db.url, poolSize: STORE_POOL },
        null,
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

/** Benchmarks 1 and 6: latency at the two loads, and CPU per request, for Toolbus and both repliers. */
export async function dispatchLatency(
  ctx: BenchContext,
  s: DispatchSetup,
): Promise<{ latency: BenchResult; cpu: BenchResult }> {
  const started = performance.now();
  const runs: RunSummary[] = [];
  const systems: System[] = ['nats-rr', 'nats-rr-pg', 'toolbus'];
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
  /** CPU of the serving process over the step, in cores (1 = one core busy all the time). */
  serverCores: number | null;
}

function judge(r: RunSummary): { pass: boolean; why: string } {
  if (r.fellBehind) return { pass: false, why: 'fell behind (too many unanswered)' };
  if (r.errors > 0) return { pass: false, why: `${r.errors} errors` };
  if (r.unanswered > 0) return { pass: false, why: `${r.unanswered} unanswered after the drain` };
  if (r.achievedRate < r.rate * 0.95) return { pass: false, why: `achieved ${r.achievedRate.toFixed(0)}/s` };
  if (r.latency.p99 > P99_BOUND_MS) return { pass: false, why: `p99 ${r.latency.p99} ms` };
  return { pass: true, why: 'ok' };
}

interface Ladder {
  system: System;
  max: number | null;
  steps: StepSummary[];
  /** Still passing when the ladder ran out of steps: the figure is a lower bound. */
  capped: boolean;
  /** Failed rates in a row. */
  failures: number;
  done: boolean;
}

async function step(
  ctx: BenchContext,
  lane: Lane,
  ladder: Ladder,
  rate: number,
  tag: string,
): Promise<boolean> {
  const c0 = await lane.server?.cpu();
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
  const c1 = await lane.server?.cpu();
  const serverCores = c0 && c1 ? cpuUs(c0, c1) / 1000 / (c1.at - c0.at) : null;
  const acc = new Accumulator(lane.system, rate);
  acc.add(r, null, null);
  const summary = acc.summary();
  const verdict = judge(summary);
  ladder.steps.push({ ...summary, ...verdict, serverCores });
  ctx.log(
    `${lane.system} step ${rate}/s: ${verdict.pass ? 'pass' : 'FAIL'} (p99 ${summary.latency.p99} ms, achieved ${summary.achievedRate.toFixed(0)}/s` +
      `${serverCores === null ? '' : `, server ${serverCores.toFixed(2)} cores`}${verdict.pass ? '' : `: ${verdict.why}`})`,
  );
  // After a failure, let what is still queued drain before anything else runs.
  if (!verdict.pass) {
    await lane.loadgen.call('quiesce', { timeoutMs: 60_000 }, 90_000);
    await sleep(1_000);
  }
  return verdict.pass;
}

/** The ladders of benchmark 2 for `systems`, stepped together (see `dispatchThroughput`). */
async function climb(ctx: BenchContext, s: DispatchSetup, systems: System[]): Promise<Map<System, Ladder>> {
  const ladders = new Map<System, Ladder>(
    systems.map((system) => [
      system,
      { system, max: null, steps: [], capped: false, failures: 0, done: false },
    ]),
  );
  let rate = ctx.d.firstRate;
  for (
    let k = 0;
    k < ctx.d.maxSteps && [...ladders.values()].some((l) => !l.done);
    k++, rate *= ctx.d.stepFactor
  ) {
    const r = Math.round(rate);
    for (const system of systems) {
      const ladder = ladders.get(system)!;
      if (ladder.done) continue;
      let passed = await step(ctx, s.lanes[system], ladder, r, `${ctx.runId}-tp-${system}-${k}`);
      if (!passed && ctx.d.retryStep)
        passed = await step(ctx, s.lanes[system], ladder, r, `${ctx.runId}-tp-${system}-${k}r`);
      if (passed) {
        ladder.max = r;
        ladder.failures = 0;
        if (k === ctx.d.maxSteps - 1) ladder.capped = true;
        continue;
      }
      if (++ladder.failures < ctx.d.failedRatesToStop && k < ctx.d.maxSteps - 1) continue;
      ladder.done = true;
      if (ladder.max !== null) continue;
      // Not even the first rate: look below it.
      ladder.max = 0;
      for (let down = Math.round(r / 2); down >= FLOOR_RATE; down = Math.round(down / 2)) {
        if (await step(ctx, s.lanes[system], ladder, down, `${ctx.runId}-tp-${system}-d${down}`)) {
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
export async function toolbusCapacity(
  ctx: BenchContext,
  s: DispatchSetup,
): Promise<{ max: number | null; steps: StepSummary[]; capped: boolean }> {
  const { max, steps, capped } = (await climb(ctx, s, ['toolbus'])).get('toolbus')!;
  return { max, steps, capped };
}

/**
 * Benchmark 2: each system's offered rate steps up (×stepFactor); a failed step is run once more
 * (full mode), and a system stops after `failedRatesToStop` failed rates in a row. The figure is the
 * highest rate that passed. All systems take each rate in turn before the next rate. A system that
 * passes no rate steps down from the first (÷2 to FLOOR_RATE): its figure is then the rate that
 * passed there, or 0.
 */
export async function dispatchThroughput(
  ctx: BenchContext,
  s: DispatchSetup,
): Promise<BenchResult & { max: number | null }> {
  const started = performance.now();
  const ladders = await climb(ctx, s, ['toolbus', 'bullmq', 'pg-inserts']);
  const l = (system: System) => ladders.get(system)!;
  const toolbus = l('toolbus');
  const bullmq = l('bullmq');
  const inserts = l('pg-inserts');
  return {
    id: 'dispatch-throughput',
    title: `2. Sustained dispatch throughput (p99 ≤ ${P99_BOUND_MS} ms)`,
    max: toolbus.max,
    figures: [
      figure('highest sustained rate', 'req/s', toolbus.max, {
        name: 'BullMQ add + worker + waitUntilFinished',
        value: bullmq.max,
      }),
      figure('highest sustained rate', 'req/s', toolbus.max, {
        name: 'raw PostgreSQL inserts, 2 commits per execution',
        value: inserts.max,
      }),
    ],
    targets: [
      target('throughput at least that of the BullMQ round trip', 'req/s', toolbus.max, bullmq.max, 'higher'),
    ],
    notes: [
      `Offered rate stepped from ${ctx.d.firstRate}/s by ×${ctx.d.stepFactor}, ${ctx.d.stepMs / 1000} s per step (${ctx.d.stepWarmupMs / 1000} s warm-up), ` +
        'the three systems in turn at each rate. A step passes when p99 ≤ 50 ms, every request is answered and the achieved rate is at least 95% of the offered one' +
        `${ctx.d.retryStep ? '; a failed step is run once more' : ''}; a system stops after ${ctx.d.failedRatesToStop} failed rate(s) in a row. ` +
        `The figure is the highest rate that passed (when no rate passes, the first rate is halved down to ${FLOOR_RATE}/s; 0 means none passed).`,
      `BullMQ: Queue.add, a Worker (concurrency ${CONCURRENCY}) that does nothing, job.waitUntilFinished through QueueEvents, on the run's own Redis. ` +
        'Durability is not equal: that Redis keeps nothing on disk (no RDB, no AOF), so a BullMQ job is not durable at all, while each Toolbus execution is committed to PostgreSQL twice.',
      `Raw inserts: the same event rows, one insert transaction per execution step (2 commits per execution), ${STORE_POOL} connections (the event store's pool), synchronous_commit on.`,
      ...[toolbus, bullmq, inserts]
        .filter((x) => x.capped)
        .map((x) => `${x.system} passed the top step of the ladder: its figure is a lower bound.`),
      `CPU of the serving process per step (cores, from process.cpuUsage) — dispatcher: ${toolbus.steps.map((x) => `${x.rate}/s ${x.serverCores?.toFixed(2) ?? '?'}`).join(', ')}; ` +
        `BullMQ worker: ${bullmq.steps.map((x) => `${x.rate}/s ${x.serverCores?.toFixed(2) ?? '?'}`).join(', ')}. A Node.js process cannot use more than about one core for its JavaScript.`,
    ],
    details: { toolbus, bullmq, inserts },
    seconds: (performance.now() - started) / 1000,
  };
}
