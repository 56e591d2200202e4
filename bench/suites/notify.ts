import { subjects } from '../../contracts/index.ts';
import type { NotifyResult, NotifyRun, NotifySetup } from '../loadgen.ts';
import type { BenchContext } from '../lib/context.ts';
import { decodeHistogram, newHistogram, summarize } from '../lib/histogram.ts';
import type { Child } from '../lib/ipc.ts';
import { figure, target, type BenchResult } from '../lib/report.ts';

/**
 * Benchmark 4: notification latency to 1,000 WebSocket clients, beside a bare `ws` broadcast.
 * Both fleets of clients stay connected (one load generator each) while the two are measured in
 * turn, round after round.
 */

interface Totals {
  sent: number;
  expected: number;
  received: number;
  disorder: number;
  connectMs: number;
}

export async function notificationLatency(ctx: BenchContext): Promise<BenchResult> {
  const started = performance.now();
  // BENCH_NOTIFY_PUBLISH=relay: the events reach NATS through the dispatcher's event relay
  // (docs/decisions/0017-event-relay.md) instead of a publish right after the commit.
  const publish = process.env['BENCH_NOTIFY_PUBLISH'] === 'relay' ? 'relay' : 'commit';
  ctx.log(
    `notify: events published by ${publish === 'relay' ? 'the event relay' : 'the appender on commit'}`,
  );
  const db = await ctx.database();
  const users = { bare: 'bench-notify-bare', notifier: 'bench-notify-toolbus' } as const;
  const notifier = await ctx.service('notifier', {
    role: 'notifier',
    // Every client is the one user's: the per-user socket cap (32 by default) raised to their number.
    env: ctx.serviceEnv(db.url, {
      NOTIFIER_PORT: '0',
      LOG_LEVEL: 'warn',
      NOTIFIER_MAX_SOCKETS_PER_USER: String(ctx.d.notifyClients),
    }),
  });
  const broadcast = await ctx.service('ws-broadcast', {
    role: 'ws-broadcast',
    natsUrl: ctx.nats.url,
    subject: subjects.events(users.bare),
  });
  const loadgens: Partial<Record<'bare' | 'notifier', Child>> = {};
  const timeout = 300_000;
  try {
    const events = ctx.d.notifyRounds * Math.ceil((ctx.d.notifySegmentMs / 1000) * ctx.d.notifyRate) + 10;
    const common = {
      clients: ctx.d.notifyClients,
      jwtSecret: ctx.jwtSecret,
      natsUrl: ctx.nats.url,
      databaseUrl: db.url,
      events,
    };
    const totals = {} as Record<'bare' | 'notifier', Totals>;
    const histograms = { bare: newHistogram(), notifier: newHistogram() };
    const commits = { bare: newHistogram(), notifier: newHistogram() };
    const rounds: Array<{ round: number; mode: string; p50: number; p99: number; max: number }> = [];
    for (const mode of ['bare', 'notifier'] as const) {
      const loadgen = await ctx.fork('loadgen.ts', `loadgen-notify-${mode}`);
      loadgens[mode] = loadgen;
      const setup: NotifySetup = {
        ...common,
        mode,
        publish,
        url: (mode === 'bare' ? broadcast : notifier).started.url!,
        userId: users[mode],
      };
      const { connectMs } = await loadgen.call<{ connectMs: number }>('notifySetup', setup, timeout);
      totals[mode] = { sent: 0, expected: 0, received: 0, disorder: 0, connectMs };
    }
    const run: NotifyRun = {
      rate: ctx.d.notifyRate,
      durationMs: ctx.d.notifySegmentMs,
      warmupMs: ctx.d.notifySegmentWarmupMs,
      drainMs: 20_000,
    };
    for (let round = 0; round < ctx.d.notifyRounds; round++) {
      const order = round % 2 === 0 ? (['bare', 'notifier'] as const) : (['notifier', 'bare'] as const);
      for (const mode of order) {
        const r = await loadgens[mode]!.call<NotifyResult>('notifyRun', run, timeout);
        histograms[mode].add(decodeHistogram(r.histogram));
        commits[mode].add(decodeHistogram(r.commit.histogram));
        const t = totals[mode];
        t.sent += r.sent;
        t.expected += r.expected;
        t.received += r.received;
        t.disorder += r.disorder;
        const seg = summarize(decodeHistogram(r.histogram));
        rounds.push({ round: round + 1, mode, p50: seg.p50, p99: seg.p99, max: seg.max });
        ctx.log(`${mode} round ${round + 1}: p99 ${seg.p99} ms, ${r.received}/${r.expected} receipts`);
      }
    }
    const latency = { bare: summarize(histograms.bare), notifier: summarize(histograms.notifier) };
    for (const mode of ['bare', 'notifier'] as const) {
      const t = totals[mode];
      ctx.log(
        `${mode}: p50 ${latency[mode].p50} ms, p99 ${latency[mode].p99} ms, ${t.received}/${t.expected} receipts, ${t.disorder} out of order`,
      );
      if (t.received < t.expected)
        throw new Error(`${mode}: ${t.expected - t.received} of ${t.expected} notifications never arrived`);
    }
    const ref = 'bare ws broadcast';
    const recordedS = (ctx.d.notifyRounds * (ctx.d.notifySegmentMs - ctx.d.notifySegmentWarmupMs)) / 1000;
    return {
      id: 'notify',
      title: '4. Notification latency to 1,000 WebSocket clients',
      figures: [
        figure('p50, publish → receipt', 'ms', latency.notifier.p50, { name: ref, value: latency.bare.p50 }),
        figure('p99, publish → receipt', 'ms', latency.notifier.p99, { name: ref, value: latency.bare.p99 }),
        figure('p99.9, publish → receipt', 'ms', latency.notifier.p999, {
          name: ref,
          value: latency.bare.p999,
        }),
      ],
      targets: [
        target(
          'notification p99 within 1.5× the bare broadcast',
          'ms',
          latency.notifier.p99,
          latency.bare.p99 * 1.5,
          'lower',
        ),
      ],
      notes: [
        `${ctx.d.notifyClients} WebSocket clients per system, all subscribed to ONE user (the fan-out worst case: each event goes to every socket), ` +
          `in a load-generator process of their own. ${ctx.d.notifyRate} events/s; ${ctx.d.notifyRounds} round(s) of ${ctx.d.notifySegmentMs / 1000} s per system in turn ` +
          `(the first ${ctx.d.notifySegmentWarmupMs / 1000} s not recorded): ${recordedS} s recorded, ${latency.notifier.count.toLocaleString('en-US')} receipts for Toolbus.`,
        publish === 'relay'
          ? "Each event is appended to the user's stream (one commit); for Toolbus the dispatcher's event relay (another process's view: its own store pool, woken by NOTIFY) publishes it on events.user.<id>, for the reference the appender publishes it at once; latency runs from the end of the commit to the receipt of the frame by each client (BENCH_NOTIFY_PUBLISH=relay)."
          : "Each event is appended to the user's stream (one commit) and then published on events.user.<id>, as the dispatcher does on commit; latency runs from the end of the commit (that publish) to the receipt of the frame by each client.",
        "Toolbus: the notifier (auth message with the user's token, subscribe from the start, then live events; default limits but NOTIFIER_MAX_SOCKETS_PER_USER, raised from 32 to the number of clients). Reference: a process that forwards each NATS message on the subject as a text frame to every open socket (the `ws` README broadcast), nothing else.",
        `Receipts: Toolbus ${totals.notifier.received}/${totals.notifier.expected}, ${totals.notifier.disorder} out of order or repeated; reference ${totals.bare.received}/${totals.bare.expected}. ` +
          `Connecting 1,000 clients took ${(totals.notifier.connectMs / 1000).toFixed(1)} s with authentication and subscription (reference ${(totals.bare.connectMs / 1000).toFixed(1)} s).`,
        `p99 of each round (ms) — Toolbus: ${rounds
          .filter((x) => x.mode === 'notifier')
          .map((x) => x.p99)
          .join(', ')}; reference: ${rounds
          .filter((x) => x.mode === 'bare')
          .map((x) => x.p99)
          .join(', ')}.`,
      ],
      details: {
        publish,
        latency,
        commit: { bare: summarize(commits.bare), notifier: summarize(commits.notifier) },
        totals,
        rounds,
      },
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    for (const l of Object.values(loadgens)) await ctx.stopChild(l);
    await ctx.stopChild(broadcast.child);
    await ctx.stopChild(notifier.child);
  }
}
