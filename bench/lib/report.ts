/**
 * What each benchmark hands back, and the report made of them: one markdown file with a table per
 * benchmark (each figure beside its reference and the ratio) and the targets, and the same as JSON.
 */
export interface Figure {
  name: string;
  unit: string;
  value: number | null;
  reference?: { name: string; value: number | null };
  /** value / reference. */
  ratio?: number | null;
  note?: string;
}

export interface Target {
  /** As the issue states it. */
  text: string;
  unit: string;
  measured: number | null;
  /** The bound the measured figure must stay within. */
  limit: number | null;
  better: 'lower' | 'higher';
  met: boolean | null;
  /** How far inside or outside the limit, in words. */
  margin: string;
}

/** A table of its own under a benchmark's figures (benchmark 2's CPU per dispatch, say). */
export interface Table {
  title: string;
  header: string[];
  rows: string[][];
}

export interface BenchResult {
  id: string;
  title: string;
  figures: Figure[];
  targets: Target[];
  /** Rendered after the figures; the same numbers are in `details` for the JSON. */
  tables?: Table[];
  notes: string[];
  /** Raw data (per-run summaries, steps) for the JSON report. */
  details: Record<string, unknown>;
  seconds: number;
  error?: string;
}

export interface Meta {
  date: string;
  mode: 'full' | 'quick';
  machine: Record<string, string | number>;
  durationSeconds: number;
  settings: Record<string, string | number | boolean>;
}

export const ratio = (
  value: number | null | undefined,
  reference: number | null | undefined,
): number | null =>
  value === null || value === undefined || reference === null || reference === undefined || reference === 0
    ? null
    : value / reference;

export function figure(
  name: string,
  unit: string,
  value: number | null,
  reference?: { name: string; value: number | null },
  note?: string,
): Figure {
  return {
    name,
    unit,
    value,
    ...(reference ? { reference, ratio: ratio(value, reference.value) } : {}),
    ...(note ? { note } : {}),
  };
}

const fmt = (v: number | null | undefined, unit = ''): string => {
  if (v === null || v === undefined || !Number.isFinite(v)) return 'n/a';
  const abs = Math.abs(v);
  const digits = abs >= 1000 ? 0 : abs >= 100 ? 1 : abs >= 10 ? 2 : abs >= 1 ? 2 : 3;
  const s = v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  return unit ? `${s} ${unit}` : s;
};

export function target(
  text: string,
  unit: string,
  measured: number | null,
  limit: number | null,
  better: 'lower' | 'higher',
): Target {
  if (measured === null || limit === null || !Number.isFinite(measured) || !Number.isFinite(limit)) {
    return { text, unit, measured, limit, better, met: null, margin: 'not measured' };
  }
  const met = better === 'lower' ? measured <= limit : measured >= limit;
  const gap = Math.abs(measured - limit);
  const pct = limit === 0 ? '' : ` (${fmt((gap / Math.abs(limit)) * 100)}%)`;
  const side =
    measured <= limit === (better === 'lower')
      ? better === 'lower'
        ? 'below'
        : 'above'
      : better === 'lower'
        ? 'over'
        : 'under';
  const margin = met
    ? `${fmt(gap, unit)}${pct} ${side} the limit`
    : `by ${fmt(gap, unit)}${pct} ${side} the limit`;
  return { text, unit, measured, limit, better, met, margin };
}

/** A report to compare with: the run before the work the new report shows. */
export interface Baseline {
  /** Where it is kept, as the report names it. */
  file: string;
  meta: Meta;
  results: BenchResult[];
}

/**
 * Each target of `results` beside the same target in `baseline`, as measured / limit: both sides
 * are relative to a reference measured in their own run, so the two runs can be compared.
 */
function beforeAndAfter(baseline: Baseline, results: BenchResult[]): string[] {
  const key = (bench: string, text: string) => `${bench}\u0000${text}`;
  const before = new Map(
    baseline.results.flatMap((r) => r.targets.map((t) => [key(r.title, t.text), t] as const)),
  );
  const shown = (t: Target) =>
    t.measured === null || t.limit === null
      ? 'not measured'
      : `${fmt(t.measured, t.unit)} (limit ${fmt(t.limit, t.unit)}, ${fmt(t.measured / t.limit)}× of it): ${t.met ? 'met' : 'missed'}`;
  const rows = results.flatMap((r) =>
    r.targets.flatMap((t) => {
      const b = before.get(key(r.title, t.text));
      return b ? [`| ${r.title} | ${t.text} | ${shown(b)} | ${shown(t)} |`] : [];
    }),
  );
  if (rows.length === 0) return [];
  return [
    '## Before and after',
    '',
    `Before: ${baseline.file}, run ${baseline.meta.date} (${baseline.meta.mode}). Each side is a figure and its limit from the same run; compare the ratios to the limit (a time meets its target under 1×, a rate over 1×).`,
    '',
    '| benchmark | target | before | after |',
    '| --- | --- | --- | --- |',
    ...rows,
    '',
  ];
}

/**
 * What bounds a figure, said next to its target when the target is missed (matched on the
 * target's text). Measured, not guessed: benchmark 7 splits dispatch time into its pieces, and
 * the CPU figures of benchmarks 2 and 6 show where the cores go.
 */
const BOUNDS: Array<[RegExp, string]> = [
  [
    /^p50 .* within 1 ms of req\/reply \+ 2 commits/,
    "Beyond the two commits of the reference, a dispatch goes through the durable intake (a JetStream publish, stored, then a pull delivery), one Redis round trip (idempotency, rate and concurrency in one script), the request and token checks, three events built, validated and hashed into the chain, and their NATS publishes. Table 1b times each step beside the reference's. In the latency run of 2026-12-06 19:35 UTC (a slower hour than 13:22: the reference's p50 at 50/s was 4.45 ms, against 1.54), at 50/s: what happens outside the dispatcher (the intake's write and pull delivery, then the answer's delivery) 1.75 ms against 1.16 for the reference's request and reply; the token check and the Redis admission 0.63 ms, which the reference does not do; the first commit 1.55 ms against 1.49, the second 1.30 against 0.80 (an append also takes its stream's lock, checks the expected revision and the event ids, and moves the stream's head: toolbus_append); the noop tool and its bookkeeping 0.17 ms. No one step is the gap: the durable intake and the Redis round trip alone are about the 1 ms the target allows. Benchmark 7 measures the same pieces closed loop.",
  ],
  [
    /^p99 .* within 2× req\/reply \+ 2 commits/,
    'A dispatch crosses four processes (NATS, dispatcher, PostgreSQL, Redis) on two shared cores, against two for the reference: a stall in any one of them (a WAL flush of the shared server, a garbage collection, a JetStream file write) lands in the tail.',
  ],
  [
    /^throughput at least that of the BullMQ/,
    "CPU: the benchmark's CPU table says where the cores go in this run, and its two profile tables (a V8 profile of the dispatcher's main thread over one more step at the same rate) where the dispatcher's share goes. In every profile so far the first item is the stream writes to its sockets (PostgreSQL, NATS, Redis: about a quarter to a third of the thread; on this virtual machine a write to a loopback socket also runs the receiving side of TCP in the kernel, and costs tens of microseconds on a slow hour), then garbage collection, zod's validation and the PostgreSQL, Redis and NATS clients, a few percent each: no one function to remove. In the quiet full run of 2026-12-06 13:22 UTC, at 1,421/s (Toolbus's last passing step) a dispatch cost 1.12 ms of CPU in all (dispatcher 0.45, PostgreSQL backends 0.33, load generator 0.15, nats-server 0.14, Redis 0.06), 1.6 of the two cores, and failed the next step (1,776/s, p99 89-107 ms) at 1.64 cores. At the same 1,421/s a BullMQ job cost 0.47 ms (Redis 0.20, load generator 0.15, worker 0.13), and its cost per job keeps falling as its rate rises (0.15 ms at 10,588/s: its worker and Redis batch): it reached 10,588/s. To pass BullMQ on two cores a dispatch would have to cost under 0.2 ms in all, a fifth of what it does. What a dispatch does beyond a BullMQ job: two synchronous commits (grouped, decision 0028), a JetStream write and its pull delivery, three events validated, hashed into the chain and published, the relay reading them back, and a token and a request checked; BullMQ's Redis writes nothing to disk. Against the reference that only commits (raw PostgreSQL inserts, two commits per execution: 2,220/s in that run) Toolbus reached 0.64x. On slower hours of the same host the ladders end on latency, not on CPU: on 2026-12-07 04:20 Toolbus failed 373/s on its p99 (52-84 ms) with the dispatcher at 0.6 of a core, and raw inserts failed 1,421/s the same way, while stalls of the shared PostgreSQL's commits reach every lane that commits; the profile then is taken at a low rate, where each dispatch also carries the process's idle work and gets little batching (benchmark 1b, bench/pg-work.ts for the statements).",
  ],
  [
    /^throughput with 2 dispatchers at least that of the BullMQ/,
    "Two dispatchers share every user's stream and take CPU from the same two cores as NATS, PostgreSQL, Redis and the load generator: a second process's idle work and its share of the queueing come out of the first's capacity. The CPU table shows the price: at the same rate two dispatchers together spend more per dispatch than one (1.77 against 1.35 ms in the run of 2026-12-07 07:40 UTC, and PostgreSQL 1.20 against 0.90), because a dispatcher's cost per request falls as its own rate rises (its writes to PostgreSQL, NATS and Redis are shared by the requests in flight together, and its group commits grow): `BENCH_DISPATCHERS=2 npx tsx bench/cpu-dispatch.ts 400` measured 2.2 ms per request each dispatcher served against 1.6 ms for one dispatcher at 400/s, and one dispatcher spends 2.9 ms at 100/s, 0.9 ms at 800/s. On two cores the second process is a cost; it pays where it gets cores of its own (docs/scaling.md). Each instance caches stream tails, and the other's appends make them stale: an append on a stale tail conflicts, waits for the commit that holds the stream, reads and goes again. Before 2026-12-05 that was about one append in ten with the benchmark's 50 users (p90 several times one dispatcher's); since, an instance that has seen a conflict reads a tail older than 10 ms again before appending on it (docs/dispatcher.md, \"Appends and concurrency\"), and a scratch run of this lane counted 5-17 conflicts in 8,400 executions. Sending each user's requests to one instance (a consumer per partition of users; NATS 2.11's pinned consumers) would save even those reads; it is not built.",
  ],
  [
    /^projection lag p99 under 50 ms/,
    "At half of benchmark 2's figure (measured without a projector) the dispatcher, the projector, PostgreSQL and NATS keep the two cores near saturation, and the store's catch-up subscription alone (the reference) has a p99 over the limit: 141 ms at 888/s on 2026-12-05, the projector adding about 10 ms to it. An event becomes readable only when every older transaction on the server has ended (the visibility horizon, decision 0001); on saturated cores those transactions end late. At 400/s the lag's p99 was 32-39 ms with the subscription's at 11-23 ms (`--only=lag --capacity=800`). The projector's own share is small: its batch waits 1 ms for company and holds a transaction id for its last two round trips only (decision 0005).",
  ],
  [
    /^rebuild at least half/,
    "A rebuild validates every event against its schema, runs the life-cycle model and writes four read models (executions, users, per-tool metrics by minute and in total with latency histograms); the reference writes one six-column table from rows it does not check. The rebuild reads no row back and writes behind (SoleWriterRows in services/projector/sql.ts: a row is written once it is forgotten or at the end, four statements at a time), its worker threads (EVENT_THREADS, decision 0029) parse and validate the events from text and send them back as columns, overlapped with the reads and writes. What is left is CPU in the reading thread, on two cores shared with PostgreSQL and the threads: a profile (node --cpu-prof on rebuildReadModels, 2026-12-05) shows about a quarter of it in garbage collection, then the socket writes, the rows held and their JSON, the driver's row parsing and the life cycle. Until 2026-12-05 a Date parsed and formatted per event, a closure made per event (named by tsx) and an object per event cloned from the threads were as much again.",
  ],
  [
    /^audit verification at least half/,
    "Verification parses every event against its schema, hashes its canonical JSON with SHA-256, checks the link and runs the life cycle. The PostgreSQL store hands it the rows with their JSON as text (EventStore.readStreamText); worker threads (EVENT_THREADS, decision 0029) parse, validate and hash pages of them and send back, as columns, what the checks read; the calling thread reads and checks them in order, a page at a time. The reference only has the driver parse the rows. In one thread an event costs about three times the reference's read and parse; schema validation, canonical JSON and SHA-256 are most of it (profile: `node --cpu-prof` on `verifyHistory`, bench/README.md). Until 2026-12-05 the reading thread bounded it (the structured clone of an object per event both ways, an await per event, a SHA-256 per Bloom filter probe): 0.36x the raw read then, 0.56-0.61x in runs after. On two cores shared with PostgreSQL it stays CPU-bound; where free cores exist the threads carry it further.",
  ],
  [
    /^notification p99 within/,
    "Both sides write each frame to each of the 1,000 sockets with one system call (ws corks the frame's header and payload into one writev), in one Node.js thread: an event is 1,000 writes. A V8 profile of the notifier over this benchmark (`BENCH_PROFILE=notifier npx tsx bench/run.ts --quick --only=notify`, 2026-12-07 07:17 UTC) put 37% of its busy thread in writev, 6% in its own session code (ordering, the per-socket buffer bound), 5% in ws, 4% in garbage collection; the rest is node:net and the events' parsing. Beyond the reference, the notifier checks each event's shape and keeps each socket's order and buffer bound, and its process also answers the clients' authentication and replay. The ratio moves with the host's hour more than with the code: over the eight full runs from 2026-12-05 to 2026-12-07 it went from 0.97× to 1.84× (met in four), and it was 1.37× in that quick run. The p99 of each round, listed in the benchmark's notes, shows how far one round's tail can stand from the next.",
  ],
  [
    /^audit replay at least half/,
    'Replay parses every event against its schema in one Node.js thread; the reference only has the driver parse the rows.',
  ],
];

function boundsOfMissed(targets: Array<Target & { bench: string }>): string[] {
  const said = new Set<string>();
  const lines: string[] = [];
  for (const t of targets) {
    if (t.met !== false) continue;
    const bound = BOUNDS.find(([pattern]) => pattern.test(t.text))?.[1];
    if (!bound || said.has(bound)) continue;
    said.add(bound);
    lines.push(`- **${t.bench}, ${t.text}.** ${bound}`);
  }
  return lines.length === 0 ? [] : ['### What bounds the missed targets', '', ...lines, ''];
}

export function toMarkdown(meta: Meta, results: BenchResult[], baseline?: Baseline): string {
  const out: string[] = [];
  out.push(`# Toolbus benchmarks (${meta.mode})`, '');
  out.push(`- date: ${meta.date}`);
  out.push(`- mode: ${meta.mode} (${meta.durationSeconds.toFixed(0)} s)`);
  for (const [k, v] of Object.entries(meta.machine)) out.push(`- ${k}: ${v}`);
  out.push(
    '',
    'Settings: ' +
      Object.entries(meta.settings)
        .map(([k, v]) => `${k}=${v}`)
        .join(', '),
    '',
  );
  out.push(
    'Every figure stands beside a reference measured in the same run on the same machine, and the ratio ' +
      'figure / reference. The machine is shared and noisy: read the ratios, not the bare times. ' +
      'Latencies are open loop, from the intended send time, in an HDR histogram (bench/README.md).',
    '',
  );

  const allTargets = results.flatMap((r) => r.targets.map((t) => ({ bench: r.title, ...t })));
  out.push(
    '## Targets',
    '',
    '| benchmark | target | measured | limit | result |',
    '| --- | --- | --- | --- | --- |',
  );
  for (const t of allTargets) {
    const result =
      t.met === null ? 'not measured' : t.met ? `**met**, ${t.margin}` : `**missed** ${t.margin}`;
    out.push(`| ${t.bench} | ${t.text} | ${fmt(t.measured, t.unit)} | ${fmt(t.limit, t.unit)} | ${result} |`);
  }
  out.push('');
  out.push(...boundsOfMissed(allTargets));
  if (baseline) out.push(...beforeAndAfter(baseline, results));

  for (const r of results) {
    out.push(`## ${r.title}`, '');
    if (r.error) out.push(`**Did not complete:** ${r.error.split('\n')[0]}`, '');
    if (r.figures.length > 0) {
      out.push(
        '| figure | Toolbus | reference | reference value | ratio |',
        '| --- | --- | --- | --- | --- |',
      );
      for (const f of r.figures) {
        const ref = f.reference;
        out.push(
          `| ${f.name}${f.note ? ` (${f.note})` : ''} | ${fmt(f.value, f.unit)} | ${ref?.name ?? '—'} | ${ref ? fmt(ref.value, f.unit) : '—'} | ${f.ratio === undefined ? '—' : f.ratio === null ? 'n/a' : `${fmt(f.ratio)}×`} |`,
        );
      }
      out.push('');
    }
    for (const t of r.tables ?? []) {
      out.push(
        `### ${t.title}`,
        '',
        `| ${t.header.join(' | ')} |`,
        `| ${t.header.map(() => '---').join(' | ')} |`,
      );
      for (const row of t.rows) out.push(`| ${row.join(' | ')} |`);
      out.push('');
    }
    for (const n of r.notes) out.push(`- ${n}`);
    out.push('', r.seconds > 0 ? `_${r.seconds.toFixed(0)} s_` : '_measured during benchmark 1_', '');
  }
  return out.join('\n');
}
