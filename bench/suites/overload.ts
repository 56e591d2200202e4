import { readFileSync } from 'node:fs';
import type { PhasedRunRequest } from '../loadgen.ts';
import { cpuUs, type BenchContext } from '../lib/context.ts';
import type { PhasedOpenLoopResult } from '../lib/openloop.ts';
import { figure, target, type BenchResult, type Target } from '../lib/report.ts';
import { lowerBound, P99_BOUND_MS, toolbusCapacity, type DispatchSetup } from './dispatch.ts';

/**
 * Benchmark 2b: above capacity the dispatcher degrades, it does not collapse. The capacity is the
 * same run's highest sustained rate (benchmark 2, or benchmark 2's ladder for Toolbus alone when 2
 * is not run). Through the same lane as benchmark 2 (agent client → JetStream intake → dispatcher
 * → PostgreSQL), one open loop offers twice the capacity for a ladder step's duration and then, at
 * once, half the capacity; then it waits for the last answers. From every request's due time,
 * answer time and outcome it reports (a) requests completed per second during the overload as a
 * share of the capacity, (b) the share of all requests answered at all by the end of the drain
 * (OVERLOADED and RATE_LIMITED answers are answers) and the split of the answers, (c) how long after
 * the drop to half the capacity the first second-long window of requests (by due time) has a p99
 * within the bound of benchmark 2.
 */

const TITLE = '2b. Throughput under overload (2× capacity, open loop)';
/** Targets of issue 16: it degrades, it does not collapse; latency is back within 15 s. */
const MIN_SHARE = 0.8;
const RECOVERY_TARGET_S = 15;
/** Latency windows slide by this much: the recovery time is known to this resolution. */
const SLIDE_MS = 100;
const WINDOW_MS = 1_000;
/**
 * Sending stops when this many requests are open at once. Each open request is an inbox
 * subscription and a promise in the load generator: this bounds its memory, and it is above what
 * the run sends at the rates this machine reaches, so it does not end the run early.
 */
const MAX_OUTSTANDING = 20_000;
/** Benchmark 2's lowest step (its FLOOR_RATE). */
const LOWEST_RATE = 5;

interface Capacity {
  rate: number;
  source: string;
}

async function capacityOf(ctx: BenchContext, s: DispatchSetup, highest: number | null): Promise<Capacity> {
  if (highest !== null && highest > 0) return { rate: highest, source: 'benchmark 2 in this run' };
  // On a machine too busy for even the lowest step, the lowest step stands in: the figures are
  // still measured (and say so), rather than the run failing.
  const floor = {
    rate: LOWEST_RATE,
    source: `no rate passed (the machine is busy): the lowest step, ${LOWEST_RATE}/s, stands in`,
  };
  if (highest === 0) return floor;
  ctx.log('overload: measuring the capacity (benchmark 2 ladder, Toolbus alone)');
  const ladder = await toolbusCapacity(ctx, s);
  if (!ladder.max) return floor;
  const bound = lowerBound(ladder, ctx.d.maxRate);
  return {
    rate: ladder.max,
    source: `benchmark 2's ladder, Toolbus alone, run for this benchmark${bound ? ` (${bound})` : ''}`,
  };
}

/** Resident memory of a process (bytes), from /proc; null when it cannot be read. */
function rssOf(pid: number): number | null {
  try {
    const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kb ? Number(kb) * 1024 : null;
  } catch {
    return null;
  }
}

/** p99 of latencies where a request not completed counts as above any bound. */
function p99(latencies: number[]): number {
  const sorted = [...latencies].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil(sorted.length * 0.99) - 1)] ?? Number.NaN;
}

interface Analysis {
  /** Requests completed (and answered at all) per second, by answer time, in the overload window after its warm-up. */
  completedPerS: number;
  answeredPerS: number;
  sent: number;
  sentInOverload: number;
  /** Requests by outcome ("completed", "failed:OVERLOADED", "error:TIMEOUT", "unanswered"), whole run and overload phase. */
  split: Record<string, number>;
  overloadSplit: Record<string, number>;
  answered: number;
  /** Seconds from the drop to the end of the first window within the bound; null: none in the run. */
  recoveryS: number | null;
  /** p99 (ms) of each second after the drop, by due time (Infinity: some request not completed). */
  p99PerSecond: number[];
  /** After recovery: seconds whose p99 stayed within the bound, of those that followed. */
  heldAfter: { within: number; of: number } | null;
}

function analyse(r: PhasedOpenLoopResult, warmupMs: number, afterMs: number): Analysis {
  const dropMs = r.phaseStartMs[1] ?? r.endMs;
  const label = (i: number) => r.outcomes[r.outcome[i]!]!;
  const isAnswer = (l: string) => l === 'completed' || l.startsWith('failed:');
  const count = (filter: (i: number) => boolean) => {
    const out: Record<string, number> = {};
    for (let i = 0; i < r.dueMs.length; i++) if (filter(i)) out[label(i)] = (out[label(i)] ?? 0) + 1;
    return out;
  };
  let completedInWindow = 0;
  let answeredInWindow = 0;
  for (let i = 0; i < r.dueMs.length; i++) {
    const t = r.settledMs[i]!;
    if (t < warmupMs || t >= dropMs) continue;
    if (label(i) === 'completed') completedInWindow++;
    if (isAnswer(label(i))) answeredInWindow++;
  }
  const windowS = (dropMs - warmupMs) / 1000;
  const split = count(() => true);
  const answered = Object.entries(split)
    .filter(([l]) => isAnswer(l))
    .reduce((n, [, k]) => n + k, 0);

  // Latency of each request after the drop, by due time; one not completed counts as unbounded.
  const after: Array<{ due: number; ms: number }> = [];
  for (let i = 0; i < r.dueMs.length; i++) {
    if (r.phase[i] !== 1) continue;
    const ms = label(i) === 'completed' ? r.settledMs[i]! - r.dueMs[i]! : Number.POSITIVE_INFINITY;
    after.push({ due: r.dueMs[i]! - dropMs, ms });
  }
  const windowP99 = (from: number) => {
    const ms = after.filter((x) => x.due >= from && x.due < from + WINDOW_MS).map((x) => x.ms);
    return ms.length ? p99(ms) : Number.NaN;
  };
  let recoveryS: number | null = null;
  for (let from = 0; from + WINDOW_MS <= afterMs; from += SLIDE_MS) {
    if (windowP99(from) <= P99_BOUND_MS) {
      recoveryS = (from + WINDOW_MS) / 1000;
      break;
    }
  }
  const p99PerSecond: number[] = [];
  for (let from = 0; from + WINDOW_MS <= afterMs; from += WINDOW_MS) p99PerSecond.push(windowP99(from));
  let heldAfter: Analysis['heldAfter'] = null;
  if (recoveryS !== null) {
    const later = [];
    for (let from = recoveryS * 1000; from + WINDOW_MS <= afterMs; from += WINDOW_MS)
      later.push(windowP99(from));
    heldAfter = { within: later.filter((p) => p <= P99_BOUND_MS).length, of: later.length };
  }
  return {
    completedPerS: completedInWindow / windowS,
    answeredPerS: answeredInWindow / windowS,
    sent: r.dueMs.length,
    sentInOverload: r.phase.filter((p) => p === 0).length,
    split,
    overloadSplit: count((i) => r.phase[i] === 0),
    answered,
    recoveryS,
    p99PerSecond,
    heldAfter,
  };
}

const fmtMs = (v: number) => (Number.isFinite(v) ? `${v.toFixed(0)}` : '∞');

export async function overload(
  ctx: BenchContext,
  s: DispatchSetup,
  highest: number | null,
): Promise<BenchResult> {
  const started = performance.now();
  const capacity = await capacityOf(ctx, s, highest);
  const lane = s.lanes.toolbus;
  // Whatever an earlier benchmark left open must not count here.
  await lane.loadgen.call('quiesce', { timeoutMs: 30_000 }, 60_000);

  const offered = 2 * capacity.rate;
  const half = Math.max(1, capacity.rate / 2);
  const overloadMs = ctx.d.stepMs;
  const recoveryMs = ctx.d.overloadRecoveryMs;
  const planned = Math.floor((overloadMs / 1000) * offered) + Math.floor((recoveryMs / 1000) * half);
  ctx.log(
    `overload: ${offered}/s for ${overloadMs / 1000} s, then ${half}/s for ${recoveryMs / 1000} s (capacity ${capacity.rate}/s, ${capacity.source})`,
  );

  const pid = lane.server?.started.pid;
  const rssBefore = pid ? rssOf(pid) : null;
  let rssPeak = rssBefore ?? 0;
  const sampler = setInterval(() => {
    rssPeak = Math.max(rssPeak, (pid ? rssOf(pid) : null) ?? 0);
  }, 250);
  const c0 = await lane.server?.cpu();
  let run: PhasedOpenLoopResult;
  try {
    run = await lane.loadgen.call<PhasedOpenLoopResult>(
      'runPhases',
      {
        phases: [
          { rate: offered, durationMs: overloadMs },
          { rate: half, durationMs: recoveryMs },
        ],
        drainMs: ctx.d.overloadDrainMs,
        maxOutstanding: Math.min(MAX_OUTSTANDING, planned + 1),
        tag: `${ctx.runId}-overload`,
      } satisfies PhasedRunRequest,
      overloadMs + recoveryMs + ctx.d.overloadDrainMs + 60_000,
    );
  } finally {
    clearInterval(sampler);
  }
  const c1 = await lane.server?.cpu();
  // Requests still open after the drain must not run into the next benchmark.
  await lane.loadgen.call('quiesce', { timeoutMs: 30_000 }, 60_000);

  const a = analyse(run, ctx.d.stepWarmupMs, recoveryMs);
  const share = a.completedPerS / capacity.rate;
  const answeredShare = a.sent ? a.answered / a.sent : null;
  const splitText = Object.entries(a.split)
    .sort(([, x], [, y]) => y - x)
    .map(([l, n]) => `${l} ${n}`)
    .join(', ');
  ctx.log(
    `overload: ${a.completedPerS.toFixed(0)} completed/s at ${offered}/s offered (${share.toFixed(2)}× capacity); ` +
      `${a.answered}/${a.sent} answered (${splitText}); ` +
      `recovery ${a.recoveryS === null ? `not within ${recoveryMs / 1000} s` : `${a.recoveryS.toFixed(1)} s`}`,
  );

  const recoveryTarget: Target =
    a.recoveryS !== null
      ? target(
          `latency back within p99 ≤ ${P99_BOUND_MS} ms at most ${RECOVERY_TARGET_S} s after the load drops to half the capacity`,
          's',
          a.recoveryS,
          RECOVERY_TARGET_S,
          'lower',
        )
      : {
          text: `latency back within p99 ≤ ${P99_BOUND_MS} ms at most ${RECOVERY_TARGET_S} s after the load drops to half the capacity`,
          unit: 's',
          measured: recoveryMs / 1000,
          limit: RECOVERY_TARGET_S,
          better: 'lower',
          met: recoveryMs / 1000 > RECOVERY_TARGET_S ? false : null,
          margin:
            recoveryMs / 1000 > RECOVERY_TARGET_S
              ? `not back within the ${recoveryMs / 1000} s measured`
              : `not back within the ${recoveryMs / 1000} s measured (quick mode: too short to judge)`,
        };
  const refused = (code: string) => a.split[`failed:${code}`] ?? 0;
  const serverCores = c0 && c1 ? cpuUs(c0, c1) / 1000 / (c1.at - c0.at) : null;

  return {
    id: 'overload',
    title: TITLE,
    figures: [
      figure('completed per second at 2× capacity offered', 'req/s', a.completedPerS, {
        name: `capacity: highest sustained rate (${capacity.source})`,
        value: capacity.rate,
      }),
      figure('requests answered by the end of the drain (any answer)', 'req', a.answered, {
        name: 'requests sent',
        value: a.sent,
      }),
      figure('… completed', 'req', a.split['completed'] ?? 0, { name: 'requests sent', value: a.sent }),
      figure('… answered OVERLOADED', 'req', refused('OVERLOADED'), { name: 'requests sent', value: a.sent }),
      figure('… answered RATE_LIMITED', 'req', refused('RATE_LIMITED'), {
        name: 'requests sent',
        value: a.sent,
      }),
      figure(
        `time until a second of requests has p99 ≤ ${P99_BOUND_MS} ms, after the drop to half the capacity`,
        's',
        a.recoveryS ?? recoveryMs / 1000,
        undefined,
        a.recoveryS === null
          ? `not reached: a lower bound, the run after the drop lasts ${recoveryMs / 1000} s`
          : undefined,
      ),
      figure("dispatcher's peak resident memory", 'MiB', rssPeak ? rssPeak / 2 ** 20 : null, {
        name: 'its resident memory before the overload',
        value: rssBefore ? rssBefore / 2 ** 20 : null,
      }),
    ],
    targets: [
      target(
        `completed per second at 2× capacity offered / capacity at least ${MIN_SHARE}`,
        '×',
        share,
        MIN_SHARE,
        'higher',
      ),
      target(
        'every request answered by the end of the drain (share answered)',
        '×',
        answeredShare,
        1,
        'higher',
      ),
      recoveryTarget,
    ],
    notes: [
      `Capacity ${capacity.rate}/s: ${capacity.source} (p99 ≤ ${P99_BOUND_MS} ms, every request answered). ` +
        `One open loop through the same lane as benchmark 2 (agent client, JetStream intake, dispatcher, 2 PostgreSQL commits; ${s.lanes.toolbus.system}): ` +
        `${offered}/s for ${overloadMs / 1000} s, then at once ${half}/s for ${recoveryMs / 1000} s, then up to ${ctx.d.overloadDrainMs / 1000} s for the last answers. ` +
        `Per-user rate and concurrency limits are set never to refuse (as in benchmark 2); the dispatcher's own bounds apply.`,
      `(a) Requests completed per second by answer time, from ${ctx.d.stepWarmupMs / 1000} s into the overload to the drop, over the capacity. ` +
        `Every answer (refusals included) per second in the same window: ${a.answeredPerS.toFixed(0)}/s (${(a.answeredPerS / capacity.rate).toFixed(2)}× capacity). ` +
        'Refusals are not counted in the headline: they are answers, not work done.',
      `(b) Of ${a.sent} requests sent (${a.sentInOverload} during the overload): ${splitText}. ` +
        '"failed:<code>" is a typed answer (OVERLOADED and RATE_LIMITED count as answered), "error:<code>" is the client giving up without one (TIMEOUT after 120 s), "unanswered" is still open at the end of the drain.',
      `(c) Requests due after the drop, in second-long windows by due time sliding by ${SLIDE_MS} ms; a request not completed counts as above the bound. ` +
        `The figure is the end of the first window with p99 ≤ ${P99_BOUND_MS} ms (resolution ${SLIDE_MS / 1000} s). ` +
        `p99 of each second after the drop (ms): ${a.p99PerSecond.map(fmtMs).join(', ')}` +
        (a.heldAfter
          ? `; after it, ${a.heldAfter.within} of ${a.heldAfter.of} full seconds stayed within the bound.`
          : '.'),
      ...(a.completedPerS >= 0.95 * offered
        ? [
            `Completed per second kept up with the ${offered}/s offered: the machine had room above the capacity figure (a rate with p99 ≤ ${P99_BOUND_MS} ms, ` +
              `${ctx.mode === 'quick' ? "from quick mode's coarse ladder, " : ''}not the most it can answer), so this run did not overload it; (a) above 1× says only that.`,
          ]
        : []),
      `Load generator: sending stops at ${Math.min(MAX_OUTSTANDING, planned + 1)} open requests (${run.fellBehind ? 'it did: the run ended early' : 'not reached'}); ` +
        `worst send lag ${run.maxSendLagMs.toFixed(0)} ms. Dispatcher CPU over the run: ${serverCores?.toFixed(2) ?? '?'} cores.`,
    ],
    details: {
      capacity,
      offered,
      half,
      overloadMs,
      recoveryMs,
      completedPerS: a.completedPerS,
      answeredPerS: a.answeredPerS,
      share,
      split: a.split,
      overloadSplit: a.overloadSplit,
      answeredShare,
      recoveryS: a.recoveryS,
      p99PerSecondMs: a.p99PerSecond.map((p) => (Number.isFinite(p) ? p : null)),
      heldAfter: a.heldAfter,
      rssBeforeBytes: rssBefore,
      rssPeakBytes: rssPeak || null,
      serverCores,
      fellBehind: run.fellBehind,
      maxSendLagMs: run.maxSendLagMs,
    },
    seconds: (performance.now() - started) / 1000,
  };
}
