import { readFileSync } from 'node:fs';
import t from 'tap';
import { bulkInsertHistory, openTestStore, runCli } from './testkit.ts';

/**
 * A 100,000-event history replays and verifies in a child process whose heap stays flat: the
 * child runs with V8's old space capped at HEAP_CAP_MB, less than holding the history would need
 * (its stored JSON alone is printed below; parsed events take several times that), so a walk that
 * kept the history would run out of memory and fail. The CLI's progress lines (--progress) report
 * its heap once a second, and /proc its peak resident size: both are printed, not asserted, since
 * when garbage is collected depends on how busy the machine is.
 */
const EXECUTIONS = 33_334; // 3 events each: 100,002 events
const HEAP_CAP_MB = 96;

interface Measured {
  code: number | null;
  heapMb: number[];
  peakRssMb: number;
  seconds: number;
  stdoutLines: number;
  stdout: string;
  stderr: string;
}

async function measure(
  args: string[],
  env: { DATABASE_URL: string } & Record<string, string>,
): Promise<Measured> {
  let pid = 0;
  let peakRssMb = 0;
  const sample = () => {
    try {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
      if (hwm) peakRssMb = Math.max(peakRssMb, Number(hwm[1]) / 1024);
    } catch {
      // the process has ended
    }
  };
  const timer = setInterval(sample, 100);
  let stdoutLines = 0;
  const started = Date.now();
  const run = await runCli([...args, '--progress'], env, {
    keepStdout: args[0] !== 'replay',
    onSpawn: (p) => (pid = p),
    onStdout: (chunk) => {
      for (const byte of chunk) if (byte === 10) stdoutLines++;
    },
  });
  clearInterval(timer);
  const heapMb = [...run.stderr.matchAll(/heap ([\d.]+) MB/g)].map((m) => Number(m[1]));
  return {
    code: run.code,
    heapMb,
    peakRssMb,
    seconds: (Date.now() - started) / 1000,
    stdoutLines,
    stdout: run.stdout,
    stderr: run.stderr,
  };
}

t.test('a 100,000-event history replays and verifies in flat memory', async (t) => {
  const { url, sql } = await openTestStore(t);
  const t0 = Date.now();
  const { events, lastHash } = await bulkInsertHistory(sql, 'bulk', EXECUTIONS, { pad: 200 });
  t.equal(events, 100_002);
  const { rows } = await sql.query<{ mb: number }>(
    `select (sum(octet_length(data::text) + octet_length(metadata::text)) / 1048576.0)::float8 as mb from toolbus_events`,
  );
  const storedMb = rows[0]!.mb;
  t.comment(
    `inserted ${events} events (${storedMb.toFixed(1)} MB of stored JSON) in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
  );
  const env = { DATABASE_URL: url, NODE_OPTIONS: `--max-old-space-size=${HEAP_CAP_MB}` };

  for (const args of [
    ['verify', 'bulk', '--json'],
    ['replay', 'bulk', '--format', 'ndjson'],
  ]) {
    const m = await measure(args, env);
    t.equal(m.code, 0, `${args[0]} exits 0`);
    if (m.code !== 0) t.comment(m.stderr.slice(-2000));
    t.ok(m.heapMb.length >= 2, `${args[0]} reported its heap (${m.heapMb.length} samples)`);
    const baseline = m.heapMb[0]!;
    const peak = Math.max(...m.heapMb);
    t.comment(
      `${args[0]}: ${m.seconds.toFixed(1)} s, heap ${baseline.toFixed(1)} MB at start, peak ${peak.toFixed(1)} MB ` +
        `(growth ${(peak - baseline).toFixed(1)} MB), peak RSS ${m.peakRssMb.toFixed(0)} MB, ${m.heapMb.length} samples`,
    );
    t.ok(
      HEAP_CAP_MB < storedMb * 2,
      `${args[0]} ran within ${HEAP_CAP_MB} MB of old space, too little to hold the history`,
    );
    if (args[0] === 'verify') {
      const report = JSON.parse(m.stdout) as {
        ok: boolean;
        events: number;
        lastHash: string;
        executions: { open: number };
      };
      t.match(
        report,
        { ok: true, events: 100_002, lastHash, executions: { open: 0 } },
        'the whole history verifies',
      );
    } else {
      t.equal(m.stdoutLines, 100_002, 'every event replayed, one line each');
    }
  }
});
