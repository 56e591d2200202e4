import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { BenchContext, FULL, QUICK } from './lib/context.ts';
import { toMarkdown, type Baseline, type BenchResult, type Meta } from './lib/report.ts';
import type { DispatchSetup } from './suites/dispatch.ts';

/**
 * `npm run bench` (full, about 20 minutes) and `npm run bench:quick` (under 3 minutes, the CI
 * smoke check). Runs every benchmark against test-owned NATS and Redis and fresh databases, writes
 * bench/results/latest(-quick).md and .json plus a timestamped copy (latest(-quick)-partial with
 * `--only`, so that a partial run leaves the last complete report alone), prints one summary line, and
 * exits non-zero when a benchmark did not run or did not produce all of its figures.
 * `--only=a,b` runs some of them (ids: latency, throughput, overload, cluster, lag, rebuild, notify, audit, cpu,
 * diagnostics, lookup; overload without throughput measures its own capacity);
 * `--own-postgres` runs them on a PostgreSQL server of the run's own instead of the shared one.
 */
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const only = args
  .find((a) => a.startsWith('--only='))
  ?.slice(7)
  .split(',');
const ownPostgres = args.includes('--own-postgres') || process.env['BENCH_OWN_POSTGRES'] === '1';
/** `--capacity=N`: benchmark 2's figure for the benchmarks that take it (2b, 2c, 3a) when it does not run. */
const capacityArg = args.find((a) => a.startsWith('--capacity='))?.slice(11);
const givenCapacity = capacityArg === undefined ? null : Number(capacityArg);
if (givenCapacity !== null && !(Number.isInteger(givenCapacity) && givenCapacity > 0)) {
  process.stderr.write(`--capacity wants a whole number of requests per second, not ${capacityArg}\n`);
  process.exit(2);
}
const mode = quick ? 'quick' : 'full';
/** Each benchmark's result id, in report order, and the `--only` word that selects it. */
const BENCHMARKS = new Map([
  ['dispatch-latency', 'latency'],
  ['dispatch-throughput', 'throughput'],
  ['overload', 'overload'],
  ['cluster', 'cluster'],
  ['projection-lag', 'lag'],
  ['rebuild', 'rebuild'],
  ['notify', 'notify'],
  ['audit', 'audit'],
  ['cpu', 'cpu'],
  ['diagnostics', 'diagnostics'],
  ['lookup', 'lookup'],
]);
/** Also in suites/overload.ts: here for the failure row when the dispatch set-up fails. */
const OVERLOAD_TITLE = '2b. Throughput under overload (2× capacity, open loop)';
const CLUSTER_TITLE = '2c. Toolbus on a 3-node NATS cluster (R3, 2 dispatchers)';
const ctx = new BenchContext(mode, quick ? QUICK : FULL, ownPostgres);
const wanted = (id: string) => !only || only.includes(id);
const started = performance.now();
const results: BenchResult[] = [];
const loadStart = loadavg()
  .map((l) => l.toFixed(2))
  .join(' ');

function failed(id: string, title: string, e: unknown, since: number): BenchResult {
  const error = e instanceof Error ? (e.stack ?? e.message) : String(e);
  ctx.log(`${id} failed: ${error}`);
  return {
    id,
    title,
    figures: [],
    targets: [],
    notes: [],
    details: {},
    seconds: (performance.now() - since) / 1000,
    error,
  };
}

async function step<T extends BenchResult>(
  id: string,
  title: string,
  fn: () => Promise<T>,
): Promise<T | null> {
  const since = performance.now();
  ctx.log(`${title}…`);
  try {
    const r = await fn();
    results.push(r);
    return r;
  } catch (e) {
    results.push(failed(id, title, e, since));
    return null;
  }
}

function version(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8' }).trim().split('\n')[0]!;
  } catch {
    return 'unknown';
  }
}

async function main(): Promise<number> {
  let stopping = false;
  const abort = (signal: string) => {
    if (stopping) return;
    stopping = true;
    ctx.log(`${signal}: stopping`);
    void ctx.close().finally(() => process.exit(130));
  };
  process.once('SIGINT', () => abort('SIGINT'));
  process.once('SIGTERM', () => abort('SIGTERM'));

  let pgVersion = 'unknown';
  try {
    await ctx.open();
    const probe = new pg.Client({
      connectionString: process.env['TEST_DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test',
    });
    await probe.connect();
    pgVersion =
      (ownPostgres ? "the run's own server, " : 'the shared server, ') +
      (
        await probe.query<{ v: string }>(
          `select current_setting('server_version') || ', synchronous_commit=' || current_setting('synchronous_commit') || ', fsync=' || current_setting('fsync') as v`,
        )
      ).rows[0]!.v;
    await probe.end();

    // Suites are imported when they run: one whose service does not load fails alone.
    const dispatchSuite = () => import('./suites/dispatch.ts');
    let dispatch: DispatchSetup | null = null;
    let highest: number | null = wanted('throughput') ? null : givenCapacity;
    const dispatchWanted = ['latency', 'cpu', 'throughput', 'overload', 'cluster', 'diagnostics'].some(
      wanted,
    );
    let twoDispatchers: number | null = null;
    if (dispatchWanted) {
      try {
        dispatch = await (await dispatchSuite()).setUpDispatch(ctx);
      } catch (e) {
        const since = performance.now();
        for (const [id, title, option] of [
          ['dispatch-latency', '1. Dispatch latency (noop)', 'latency'],
          ['dispatch-throughput', '2. Sustained dispatch throughput (p99 ≤ 50 ms)', 'throughput'],
          ['overload', OVERLOAD_TITLE, 'overload'],
          ['cluster', CLUSTER_TITLE, 'cluster'],
          ['cpu', '6. CPU per dispatch', 'cpu'],
          ['diagnostics', '7. Where dispatch time goes (diagnostics, no target)', 'diagnostics'],
        ] as const) {
          if (wanted(option)) results.push(failed(id, title, e, since));
        }
      }
    }
    if (dispatch && (wanted('latency') || wanted('cpu'))) {
      const since = performance.now();
      try {
        const { latency, cpu } = await (await dispatchSuite()).dispatchLatency(ctx, dispatch);
        if (wanted('latency')) results.push(latency);
        if (wanted('cpu')) results.push(cpu);
      } catch (e) {
        if (wanted('latency'))
          results.push(failed('dispatch-latency', '1. Dispatch latency (noop)', e, since));
        if (wanted('cpu')) results.push(failed('cpu', '6. CPU per dispatch', e, since));
      }
    }
    if (dispatch && wanted('throughput')) {
      const d = dispatch;
      const r = await step(
        'dispatch-throughput',
        '2. Sustained dispatch throughput (p99 ≤ 50 ms)',
        async () => (await dispatchSuite()).dispatchThroughput(ctx, d),
      );
      highest = r?.max ?? null;
      twoDispatchers = (r?.details['toolbus2'] as { max: number | null } | null)?.max ?? null;
    }
    if (dispatch && wanted('overload')) {
      // Benchmark 2's figure is the capacity; without it (not selected, or failed) the suite
      // measures its own with the same ladder, Toolbus alone.
      const d = dispatch;
      const capacity = highest;
      await step('overload', OVERLOAD_TITLE, async () =>
        (await import('./suites/overload.ts')).overload(ctx, d, capacity),
      );
    }
    if (dispatch && wanted('cluster')) {
      const d = dispatch;
      const [tb, two] = [highest, twoDispatchers];
      await step('cluster', CLUSTER_TITLE, async () =>
        (await import('./suites/cluster.ts')).clusterBench(ctx, d, tb, two),
      );
    }
    if (dispatch && wanted('diagnostics'))
      await step('diagnostics', '7. Where dispatch time goes (diagnostics, no target)', async () =>
        (await import('./suites/diagnose.ts')).diagnose(ctx, 'bench.rr.bare'),
      );
    if (dispatch) await (await dispatchSuite()).tearDownDispatch(ctx, dispatch);
    if (wanted('lag'))
      await step('projection-lag', '3a. Projection lag at half the highest throughput', async () =>
        (await import('./suites/projection.ts')).projectionLag(ctx, highest),
      );
    if (wanted('rebuild'))
      await step('rebuild', '3b. Read-model rebuild speed', async () =>
        (await import('./suites/projection.ts')).rebuildSpeed(ctx),
      );
    if (wanted('notify'))
      await step('notify', '4. Notification latency to 1,000 WebSocket clients', async () =>
        (await import('./suites/notify.ts')).notificationLatency(ctx),
      );
    if (wanted('audit'))
      await step('audit', '5. Audit replay and verification', async () =>
        (await import('./suites/audit.ts')).auditReplay(ctx),
      );
    if (wanted('lookup'))
      await step('lookup', '8. Lookup cost against history length', async () =>
        (await import('./suites/lookup.ts')).lookupCost(ctx),
      );
  } catch (e) {
    results.push(failed('setup', 'Set-up', e, started));
  } finally {
    await ctx.close();
  }

  const order = [...BENCHMARKS.keys(), 'setup'];
  results.sort((a, b) => order.indexOf(a.id) - order.indexOf(b.id));
  const meta: Meta = {
    date: new Date().toISOString(),
    mode,
    machine: {
      cpu: `${cpus().length} × ${cpus()[0]?.model ?? 'unknown'}`,
      memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
      kernel: release(),
      node: process.version,
      postgresql: pgVersion,
      'nats-server': version(process.env['NATS_SERVER_BIN'] ?? 'nats-server', ['--version']).replace(
        /^nats-server:\s*/,
        '',
      ),
      redis: version(process.env['REDIS_SERVER_BIN'] ?? 'redis-server', ['--version']).replace(
        /^Redis server /,
        '',
      ),
      'load average at start (1, 5, 15 min)': loadStart,
      'load average at end': loadavg()
        .map((l) => l.toFixed(2))
        .join(' '),
    },
    durationSeconds: (performance.now() - started) / 1000,
    settings: { ...ctx.d, only: only?.join('+') ?? 'all', ownPostgres },
  };

  const dir = fileURLToPath(new URL('./results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  // A partial run (--only) must not replace the report of the last complete one.
  const base = `latest${quick ? '-quick' : ''}${only ? '-partial' : ''}`;
  const stamp = `${meta.date.replace(/[:.]/g, '-').slice(0, 19)}Z-${mode}`;
  const markdown = toMarkdown(meta, results, readBaseline(dir, mode));
  const json = `${JSON.stringify({ meta, results }, null, 2)}\n`;
  for (const name of [base, stamp]) {
    writeFileSync(`${dir}${name}.md`, markdown);
    writeFileSync(`${dir}${name}.json`, json);
  }

  const expected = [...BENCHMARKS].filter(([, flag]) => wanted(flag)).map(([id]) => id);
  const complete = (r: BenchResult) =>
    !r.error &&
    r.figures.length > 0 &&
    r.figures.every((f) => f.value !== null && (!f.reference || f.reference.value !== null));
  const ran = expected.filter((id) => results.some((r) => r.id === id && complete(r)));
  const targets = results.flatMap((r) => r.targets);
  const met = targets.filter((t) => t.met === true).length;
  const missing = expected.filter((id) => !ran.includes(id));
  process.stdout.write(
    `bench ${mode}: ${ran.length}/${expected.length} benchmarks ran with all figures` +
      `${missing.length ? ` (incomplete: ${missing.join(', ')})` : ''}, ${met}/${targets.length} targets met, ` +
      `${meta.durationSeconds.toFixed(0)} s; report bench/results/${base}.md\n`,
  );
  // The children's logs are kept when something failed or profiles were asked for.
  if (missing.length > 0 || process.env['BENCH_PROFILE']) ctx.log(`child logs: ${ctx.logDir}`);
  else rmSync(ctx.logDir, { recursive: true, force: true });
  return missing.length === 0 ? 0 : 1;
}

process.exitCode = await main();

/**
 * The run the report compares with: `results/before.json` (a full run kept in the repository from
 * before the last round of performance work), for a full run only.
 */
function readBaseline(dir: string, mode: 'full' | 'quick'): Baseline | undefined {
  const file = `${dir}before.json`;
  if (mode !== 'full' || !existsSync(file)) return undefined;
  const { meta, results } = JSON.parse(readFileSync(file, 'utf8')) as Omit<Baseline, 'file'>;
  return { file: 'bench/results/before.json', meta, results };
}
