/**
 * The dispatcher's CPU per dispatch at one fixed open-loop rate, alone (no reference systems):
 * for comparing two versions of the dispatcher in the same session (run it in each worktree, in
 * turn). A warm-up segment first (JIT, connections, caches), then `rounds` segments; each prints
 * the dispatcher's CPU (process.cpuUsage: user + system, all threads) per answered request, and
 * its write system calls per answered request (/proc/<pid>/io: what coalescing socket writes
 * saves, counted, where CPU time on a shared machine is noisy).
 *
 *   npx tsx bench/cpu-dispatch.ts [rate=200] [rounds=5] [segmentS=8]
 *
 * With BENCH_DISPATCHERS=2 two dispatchers share the intake (benchmark 2's second lane): the CPU
 * and writes are then the first one's, and each round also prints the latency percentiles.
 *
 * With BENCH_PROFILE=dispatcher the dispatcher writes a CPU profile (kept in the log directory);
 * the line "measured from +N s" says how many seconds of it to skip for
 * `npx tsx bench/profile-top.ts <profile> 30 N` (the warm-up and start-up out of the figures).
 */
import { BenchContext, cpuUs, QUICK } from './lib/context.ts';
import { decodeHistogram, summarize } from './lib/histogram.ts';
import type { OpenLoopResult } from './lib/openloop.ts';
import { procWriteCalls } from './lib/proc.ts';
import { dispatcherEnv, dispatchWorkload } from './suites/dispatch.ts';

const [rateArg, roundsArg, segmentArg] = process.argv.slice(2);
const rate = Number(rateArg ?? 200);
const rounds = Number(roundsArg ?? 5);
const segmentMs = Number(segmentArg ?? 8) * 1000;
const dispatchers = Number(process.env['BENCH_DISPATCHERS'] ?? 1);

const ctx = new BenchContext('quick', QUICK);
try {
  await ctx.open();
  const db = await ctx.database();
  const bornAt = performance.now();
  const dispatcher = await ctx.service('dispatcher', { role: 'dispatcher', env: dispatcherEnv(ctx, db.url) });
  for (let i = 1; i < dispatchers; i++) {
    await ctx.service(`dispatcher-${i}`, {
      role: 'dispatcher',
      env: dispatcherEnv(ctx, db.url, { DISPATCHER_ID: `bench-dispatcher-${i}` }),
    });
  }
  const loadgen = await ctx.fork('loadgen.ts', 'loadgen-toolbus');
  await loadgen.call('setup', dispatchWorkload(ctx));
  const pid = dispatcher.child.pid;
  const segment = async (tag: string): Promise<{ r: OpenLoopResult; us: number; writes: number }> => {
    const w0 = procWriteCalls(pid) ?? NaN;
    const c0 = await dispatcher.cpu();
    const r = await loadgen.call<OpenLoopResult>(
      'run',
      { rate, durationMs: segmentMs, warmupMs: 0, drainMs: 15_000, maxOutstanding: rate * 10, tag },
      segmentMs + 140_000,
    );
    const c1 = await dispatcher.cpu();
    return { r, us: cpuUs(c0, c1), writes: (procWriteCalls(pid) ?? NaN) - w0 };
  };
  await segment(`${ctx.runId}-warm`);
  ctx.log(`measured from +${((performance.now() - bornAt) / 1000).toFixed(0)} s of the dispatcher's life`);
  const perRequest: number[] = [];
  const writesPer: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const { r, us, writes } = await segment(`${ctx.runId}-${i}`);
    const per = r.completed > 0 ? us / r.completed : NaN;
    const l = summarize(decodeHistogram(r.histogram));
    perRequest.push(per);
    writesPer.push(writes / r.completed);
    ctx.log(
      `round ${i}: ${r.completed}/${r.sent} answered, ${r.errors} errors, ${per.toFixed(0)} µs CPU/dispatch, ` +
        `${(writes / r.completed).toFixed(2)} writes/dispatch, p50 ${l.p50.toFixed(2)} ms, p99 ${l.p99.toFixed(2)} ms`,
    );
  }
  const sorted = [...perRequest].sort((a, b) => a - b);
  console.log(
    `cpu per dispatch @ ${rate}/s: median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(0)} µs, ` +
      `min ${sorted[0]!.toFixed(0)} µs, rounds ${perRequest.map((x) => x.toFixed(0)).join(' ')}; ` +
      `write syscalls/dispatch ${writesPer.map((x) => x.toFixed(2)).join(' ')}`,
  );
} finally {
  await ctx.close();
  if (process.env['BENCH_PROFILE']) ctx.log(`child logs: ${ctx.logDir}`);
}
