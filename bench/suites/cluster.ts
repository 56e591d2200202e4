import { setTimeout as sleep } from 'node:timers/promises';
import { jetstreamManager } from '@nats-io/jetstream';
import { jetstream as jetstreamNames } from '../../contracts/index.ts';
import { connectNats } from '../../lib/nats.ts';
import type { PhasedRunRequest } from '../loadgen.ts';
import type { BenchContext, Service } from '../lib/context.ts';
import type { Child } from '../lib/ipc.ts';
import type { PhasedOpenLoopResult } from '../lib/openloop.ts';
import { startBenchNatsCluster, type BenchNatsCluster } from '../lib/natsCluster.ts';
import { databaseOf } from '../lib/proc.ts';
import { figure, target, type BenchResult, type Figure, type Target } from '../lib/report.ts';
import {
  climb,
  costsAt,
  costsTable,
  dispatcherEnv,
  dispatchWorkload,
  lowerBound,
  midRate,
  openLane,
  P99_BOUND_MS,
  pidOf,
  SYSTEM_NAMES,
  type DispatchSetup,
  type Lane,
  type Ladder,
} from './dispatch.ts';

/**
 * Benchmark 2c: Toolbus on a JetStream cluster. Three nats-servers (bench/lib/natsCluster.ts:
 * Toolbus's authorization, as the fault tests' cluster, without their TCP proxies), the intake
 * stream with three replicas (`NATS_STREAM_REPLICAS=3`: a request is acknowledged once two nodes
 * stored it), two dispatchers sharing the intake consumer. (a) Benchmark
 * 2's ladder for it, rate by rate in turn with the single-node Toolbus lane (one nats-server, one
 * dispatcher) of the same run, its reference. (b) Under an open loop at half the cluster's figure,
 * the node leading the intake stream is killed: how long until answers resume, and whether every
 * request was answered in the end.
 */

export const TITLE = '2c. Toolbus on a 3-node NATS cluster (R3, 2 dispatchers)';
/** Issue 20: after a node is lost, answers resume within 15 s. */
const RESUME_TARGET_S = 15;
const REPLICAS = 3;
/** As in the overload benchmark: bounds the load generator's memory, not reached at these rates. */
const MAX_OUTSTANDING = 20_000;
/** Benchmark 2's lowest step (its FLOOR_RATE). */
const LOWEST_RATE = 5;

interface ClusterLane {
  lane: Lane;
  cluster: BenchNatsCluster;
  /** The intake stream's replicas as JetStream reports them (checks NATS_STREAM_REPLICAS took). */
  replicas: number | null;
  stop(): Promise<void>;
}

async function streamReplicas(cluster: BenchNatsCluster): Promise<number | null> {
  const nc = await connectNats(cluster.url, 'bench-cluster-admin', {
    nkeySeed: cluster.identities.dispatcher.seed,
  });
  try {
    const jsm = await jetstreamManager(nc, { timeout: 5_000 });
    return (await jsm.streams.info(jetstreamNames.requestsStream)).config.num_replicas;
  } catch {
    return null;
  } finally {
    await nc.close();
  }
}

async function clusterLane(ctx: BenchContext): Promise<ClusterLane> {
  const t = ctx.teardown();
  const services: Service[] = [];
  const loadgens: Child[] = [];
  const stop = async () => {
    for (const l of loadgens) await ctx.stopChild(l);
    for (const svc of services) await ctx.stopChild(svc.child);
    await t.run();
  };
  try {
    const cluster = await startBenchNatsCluster(REPLICAS);
    t.teardown(() => cluster.stop());
    const db = await ctx.database();
    for (const id of ['a', 'b']) {
      services.push(
        await ctx.service(`dispatcher-c${id}`, {
          role: 'dispatcher',
          env: dispatcherEnv(ctx, db.url, {
            ...cluster.serviceEnv.dispatcher,
            NATS_URL: cluster.url,
            NATS_STREAM_REPLICAS: String(REPLICAS),
            DISPATCHER_ID: `bench-dispatcher-c${id}`,
          }),
        }),
      );
    }
    const lane = await openLane(
      ctx,
      'toolbus-cluster',
      dispatchWorkload(ctx, cluster.url, cluster.identities.agent.seed),
      services[0]!,
      {
        processes: [
          ...services.map((svc) => ({ role: 'service' as const, pid: pidOf(svc) })),
          ...cluster.nodes.map((n) => ({ role: 'nats' as const, pid: () => n.pid() })),
          { role: 'redis', pid: () => ctx.redis.pid() },
        ],
        database: databaseOf(db.url),
      },
      loadgens,
    );
    return { lane, cluster, replicas: await streamReplicas(cluster), stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

interface Resume {
  rate: number;
  killedNode: string | null;
  /** From the start of the run (ms). */
  killMs: number;
  /** From the kill to the first completed answer of a request due after it (s); null: none. */
  resumeS: number | null;
  /** The longest time without any completed answer from the kill to the end of sending (s). */
  longestGapS: number;
  sent: number;
  answered: number;
  split: Record<string, number>;
  maxSendLagMs: number;
  fellBehind: boolean;
}

/**
 * Where answers stopped and started again, from the loop's due and answer times. "Resume" is the
 * cluster fault test's definition (`measureResume` in test/faults/load.ts: from the fault to the
 * first answer to a request sent after it), computed here from the bench's own open loop, which
 * runs in the load generator's process rather than beside the fault test's ledger. Unlike that
 * test's sender, the bench's does not retry a publish that was not acknowledged: it is counted.
 */
function analyseResume(r: PhasedOpenLoopResult, killMs: number, sendEndMs: number) {
  const label = (i: number) => r.outcomes[r.outcome[i]!]!;
  const completed: number[] = [];
  let resumeMs: number | null = null;
  const split: Record<string, number> = {};
  for (let i = 0; i < r.dueMs.length; i++) {
    split[label(i)] = (split[label(i)] ?? 0) + 1;
    if (label(i) !== 'completed') continue;
    completed.push(r.settledMs[i]!);
    if (r.dueMs[i]! >= killMs && (resumeMs === null || r.settledMs[i]! < resumeMs))
      resumeMs = r.settledMs[i]!;
  }
  const times = completed.filter((x) => x >= killMs && x <= sendEndMs).sort((a, b) => a - b);
  let gap = 0;
  let last = killMs;
  for (const x of times) {
    gap = Math.max(gap, x - last);
    last = x;
  }
  gap = Math.max(gap, sendEndMs - last);
  const answered = Object.entries(split)
    .filter(([l]) => l === 'completed' || l.startsWith('failed:'))
    .reduce((n, [, k]) => n + k, 0);
  return {
    resumeS: resumeMs === null ? null : (resumeMs - killMs) / 1000,
    longestGapS: gap / 1000,
    split,
    answered,
  };
}

/** An open loop at `rate` on the cluster lane; the intake's leader node is killed part-way. */
async function killLeader(ctx: BenchContext, c: ClusterLane, rate: number): Promise<Resume> {
  const before = ctx.d.clusterBeforeKillMs;
  const after = ctx.d.clusterAfterKillMs;
  await c.lane.loadgen.call('quiesce', { timeoutMs: 30_000 }, 60_000);
  ctx.log(
    `cluster: ${rate}/s, the intake's leader node killed after ${before / 1000} s, ${after / 1000} s after it`,
  );
  const planned = Math.floor(((before + after) / 1000) * rate);
  const run = c.lane.loadgen.call<PhasedOpenLoopResult>(
    'runPhases',
    {
      phases: [{ rate, durationMs: before + after }],
      drainMs: ctx.d.overloadDrainMs,
      maxOutstanding: Math.min(MAX_OUTSTANDING, planned + 1),
      tag: `${ctx.runId}-cluster-kill`,
    } satisfies PhasedRunRequest,
    before + after + ctx.d.overloadDrainMs + 60_000,
  );
  await sleep(before);
  const leader = await c.cluster.streamLeader();
  const killWall = Date.now();
  if (leader) await leader.kill();
  ctx.log(`cluster: killed ${leader?.name ?? 'nothing (no leader found)'}`);
  const r = await run;
  await c.lane.loadgen.call('quiesce', { timeoutMs: 30_000 }, 60_000);
  const killMs = killWall - r.startWallMs;
  const a = analyseResume(r, killMs, before + after);
  return {
    rate,
    killedNode: leader?.name ?? null,
    killMs,
    ...a,
    sent: r.dueMs.length,
    maxSendLagMs: r.maxSendLagMs,
    fellBehind: r.fellBehind,
  };
}

export async function clusterBench(
  ctx: BenchContext,
  s: DispatchSetup,
  /** Benchmark 2's Toolbus figure in this run, when it ran. */
  highest: number | null,
  /** Benchmark 2's "2 dispatchers" figure in this run, when it ran: the single-node twin of this lane. */
  twoDispatchers: number | null,
): Promise<BenchResult> {
  const started = performance.now();
  const c = await clusterLane(ctx);
  let ladders: Map<string, Ladder>;
  let resume: Resume | null;
  try {
    ctx.log(`cluster: intake stream replicas ${c.replicas ?? 'unknown'}`);
    // With benchmark 2's figure in this run, the steps far below it (under a quarter) are skipped:
    // both lanes pass them, and a full run must stay short.
    ladders = await climb(ctx, s, [s.lanes.toolbus, c.lane], highest ? highest / 4 : ctx.d.firstRate);
    const capacity = ladders.get('toolbus-cluster')!.max;
    // On a machine too busy for even the lowest step, the lowest step stands in (and the notes say
    // so): the kill is still measured rather than the benchmark left without figures.
    resume = await killLeader(ctx, c, capacity ? Math.max(1, Math.round(capacity / 2)) : LOWEST_RATE);
  } finally {
    await c.stop();
  }
  const single = ladders.get('toolbus')!;
  const cluster = ladders.get('toolbus-cluster')!;
  const bound = (l: Ladder) => lowerBound(l, ctx.d.maxRate);
  const boundNote = (...ls: Ladder[]) => {
    const names = ls.filter((l) => bound(l)).map((l) => SYSTEM_NAMES[l.system]);
    return names.length ? `lower bound for ${names.join(' and ')}, see the notes` : undefined;
  };
  const rate = midRate(single, ctx.d.firstRate);
  const costs = costsAt([single, cluster], rate);
  const resumeText = `answers resume within ${RESUME_TARGET_S} s after the intake's leader node is killed at half the cluster's capacity`;
  const measuredAfterS = ctx.d.clusterAfterKillMs / 1000;

  // A publish JetStream did not acknowledge is known to the client (PUBLISH_FAILED: it may retry
  // with the same request id, deduplicated); what it acknowledged must be answered.
  const notAccepted = resume ? (resume.split['error:PUBLISH_FAILED'] ?? 0) : null;
  const accepted = resume && notAccepted !== null ? resume.sent - notAccepted : null;
  const figures: Figure[] = [
    figure(
      'highest sustained rate',
      'req/s',
      cluster.max,
      { name: 'Toolbus, one nats-server, 1 dispatcher (same ladder)', value: single.max },
      boundNote(cluster, single),
    ),
  ];
  if (twoDispatchers !== null)
    figures.push(
      figure('highest sustained rate', 'req/s', cluster.max, {
        name: "Toolbus, one nats-server, 2 dispatchers (benchmark 2's ladder, not stepped with this one)",
        value: twoDispatchers,
      }),
    );
  figures.push(
    figure(
      "time from the leader's kill to the first answer of a request sent after it",
      's',
      resume ? (resume.resumeS ?? measuredAfterS) : null,
      undefined,
      resume && resume.resumeS === null
        ? `not reached: a lower bound, ${measuredAfterS} s measured`
        : undefined,
    ),
    figure('longest time without any answer after the kill', 's', resume?.longestGapS ?? null),
    figure('requests answered by the end of the drain', 'req', resume?.answered ?? null, {
      name: 'requests the intake accepted (publish acknowledged)',
      value: accepted,
    }),
    figure('requests whose publish was not acknowledged (the client may retry)', 'req', notAccepted, {
      name: 'requests sent',
      value: resume?.sent ?? null,
    }),
  );
  const resumeTarget: Target =
    resume && resume.resumeS !== null
      ? target(resumeText, 's', resume.resumeS, RESUME_TARGET_S, 'lower')
      : {
          text: resumeText,
          unit: 's',
          measured: resume ? measuredAfterS : null,
          limit: RESUME_TARGET_S,
          better: 'lower',
          met: resume && measuredAfterS > RESUME_TARGET_S ? false : null,
          margin: resume
            ? `not resumed within the ${measuredAfterS} s measured${measuredAfterS > RESUME_TARGET_S ? '' : ' (quick mode: too short to judge)'}`
            : 'not measured',
        };
  const splitText = resume
    ? Object.entries(resume.split)
        .sort(([, x], [, y]) => y - x)
        .map(([l, n]) => `${l} ${n}`)
        .join(', ')
    : '';
  return {
    id: 'cluster',
    title: TITLE,
    figures,
    targets: [
      resumeTarget,
      target(
        'every request the intake accepted answered after the leader node is killed (share answered)',
        '×',
        resume && accepted ? resume.answered / accepted : null,
        1,
        'higher',
      ),
    ],
    tables: [costsTable(rate, costs)],
    notes: [
      `Cluster: 3 nats-servers with JetStream and Toolbus's authorization (bench/lib/natsCluster.ts: as the fault tests' startSecuredNatsCluster, without its TCP proxies), ` +
        `the intake stream with ${REPLICAS} replicas (JetStream reports ${c.replicas ?? 'unknown'}; a request is acknowledged once a majority stored it), ` +
        'two dispatchers sharing the intake consumer, the load generator connected as an agent to every node.',
      `Ladder: benchmark 2's (from ${ctx.d.firstRate}/s by ×${ctx.d.stepFactor} until each fails, p99 ≤ ${P99_BOUND_MS} ms, send lag ≤ ${ctx.d.maxSendLagMs} ms` +
        `${highest ? `; its rates under a quarter of benchmark 2's ${highest}/s skipped, from ${single.steps[0]?.rate ?? '?'}/s` : ''}), ` +
        'the cluster lane and its reference in turn at each rate. The reference is the single-node Toolbus lane (one nats-server, one dispatcher) of the same run.',
      ...[single, cluster].map(
        (l) =>
          `${SYSTEM_NAMES[l.system]}: ${l.max}/s; ended by ${l.endedBy === 'cap' ? 'the safety cap' : l.endedBy === 'generator' ? 'the load generator' : 'the system failing'}` +
          `${l.steps.at(-1)?.pass === false ? ` (last step ${l.steps.at(-1)!.rate}/s: ${l.steps.at(-1)!.why})` : ''}.`,
      ),
      ...[single, cluster].flatMap((l) => (bound(l) ? [`${bound(l)}.`] : [])),
      `CPU per dispatch: as in benchmark 2 (/proc, the whole step at ${rate}/s, the rate nearest half of the single-node figure, over the requests completed; idle work included, ` +
        'so read it at hundreds per second); the three nats-servers are summed in one row.',
      resume
        ? `Leader kill: open loop at ${resume.rate}/s (${cluster.max ? "half the cluster's figure" : 'the lowest step: the cluster passed no rate'}) for ${(ctx.d.clusterBeforeKillMs + ctx.d.clusterAfterKillMs) / 1000} s; ` +
          `after ${(resume.killMs / 1000).toFixed(1)} s the node leading the intake stream (${resume.killedNode ?? 'none found'}) was killed (SIGKILL) and left down; ` +
          `then up to ${ctx.d.overloadDrainMs / 1000} s for the last answers. Of ${resume.sent} requests: ${splitText}. ` +
          `Load generator: worst send lag ${resume.maxSendLagMs.toFixed(0)} ms${resume.fellBehind ? ', stopped sending at the open-request bound' : ''}.`
        : 'Leader kill: not run.',
    ],
    details: { replicas: c.replicas, single, cluster, resume, cpuPerDispatch: { rate, systems: costs } },
    seconds: (performance.now() - started) / 1000,
  };
}
