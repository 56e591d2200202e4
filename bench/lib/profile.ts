/**
 * Where a V8 CPU profile spends its time: self time by function and by file (a package under
 * node_modules, `node:` for Node's own, the path under the repo for ours). Used by
 * bench/profile-top.ts on a `--cpu-prof` file, and by bench/server.ts for the profile benchmark 2
 * takes of the dispatcher (`profileStart` / `profileTake`).
 */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
export interface CpuProfile {
  nodes: Array<{ id: number; callFrame: CallFrame }>;
  samples?: number[];
  timeDeltas?: number[];
}

/** Self time (µs) of the top entries, heaviest first. */
export type Ranked = Array<[name: string, us: number]>;

export interface ProfileSummary {
  /** Time the profile covers (µs), idle included. */
  sampledUs: number;
  /** Of it, the time the thread was not idle. */
  busyUs: number;
  byFunction: Ranked;
  byFile: Ranked;
}

/** A short name for the file of a frame: the package under node_modules, the path under the repo. */
export function fileOf(url: string): string {
  if (url === '') return '(native)';
  if (url.startsWith('node:')) return url;
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return `npm:${rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  const repo = url.search(/\/(services|lib|contracts|bench|packages|scripts)\//);
  return repo >= 0 ? url.slice(repo + 1) : url.replace(/^file:\/\//, '');
}

const IDLE = '(idle)';

/**
 * The "file" of C++ called from JavaScript (frames without a url): a stream handle's writes (a
 * socket's, in a service) in one group, the rest by name, V8's own entries as V8 names them.
 * `writeString` is not a stream's: it is fs.writeSync of a string (pino's log lines).
 */
function nativeGroup(name: string): string {
  if (/^write(v|Buffer|(Utf8|Latin1|Ascii|Ucs2)String)$/.test(name)) {
    return '(native) stream writes (writev, writeBuffer, writeUtf8String, …)';
  }
  return `(native) ${name || '(anonymous)'}`;
}

/**
 * Self time by function and by file, the `top` heaviest of each (idle left out of both), from
 * `skipUs` into the profile on (start-up and warm-up out of the figures). Native frames are
 * grouped by name in the by-file ranking (`nativeGroup`).
 */
export function summarise(profile: CpuProfile, top: number, skipUs = 0): ProfileSummary {
  const byId = new Map(profile.nodes.map((node) => [node.id, node.callFrame]));
  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  const deltas = profile.timeDeltas ?? [];
  let sampledUs = 0;
  let idleUs = 0;
  let at = 0;
  (profile.samples ?? []).forEach((id, i) => {
    const us = deltas[i] ?? 0;
    at += us;
    // The first sample's delta runs from the profiler's start, not from a sample: when started
    // through the inspector it is the time `Profiler.start` took to come back, all put on its
    // `dispatch`, and on a busy event loop that can be most of a short profile.
    if (i === 0 || at < skipUs) return;
    sampledUs += us;
    const frame = byId.get(id)!;
    if (frame.functionName === IDLE) {
      idleUs += us;
      return;
    }
    const file = fileOf(frame.url);
    const fn = `${frame.functionName || '(anonymous)'} ${file}${frame.url ? `:${frame.lineNumber + 1}` : ''}`;
    byFunction.set(fn, (byFunction.get(fn) ?? 0) + us);
    const group = frame.url === '' ? nativeGroup(frame.functionName) : file;
    byFile.set(group, (byFile.get(group) ?? 0) + us);
  });
  const rank = (m: Map<string, number>): Ranked => [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
  return { sampledUs, busyUs: sampledUs - idleUs, byFunction: rank(byFunction), byFile: rank(byFile) };
}
