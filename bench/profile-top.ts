/**
 * Where a V8 CPU profile (`--cpu-prof`, `BENCH_PROFILE=…`) spends its time: self time by
 * function and by file, the top N of each, as a share of all samples and in ms.
 *
 *   npx tsx bench/profile-top.ts <file.cpuprofile> [top=30] [skipS=0]
 *
 * `skipS` leaves out the profile's first seconds (start-up, warm-up: see bench/cpu-dispatch.ts).
 * Files under node_modules are grouped by package, Node's own by `node:`; (idle), (program) and
 * (garbage collector) stay as V8 names them.
 */
import { readFileSync } from 'node:fs';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** A short name for the file of a frame: the package under node_modules, the path under the repo. */
function fileOf(url: string): string {
  if (url === '') return '(native)';
  if (url.startsWith('node:')) return url;
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return `npm:${rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}`;
  }
  const repo = url.search(/\/(services|lib|contracts|bench|packages)\//);
  return repo >= 0 ? url.slice(repo + 1) : url.replace(/^file:\/\//, '');
}

function top(map: Map<string, number>, n: number, total: number): string[] {
  return [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(
      ([k, us]) =>
        `${((100 * us) / total).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(7)} ms  ${k}`,
    );
}

const [path, nArg, skipArg] = process.argv.slice(2);
if (!path) {
  console.error('usage: npx tsx bench/profile-top.ts <file.cpuprofile> [top=30] [skipS=0]');
  process.exit(2);
}
const n = Number(nArg ?? 30);
const skipUs = Number(skipArg ?? 0) * 1e6;
const profile = JSON.parse(readFileSync(path, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const byFunction = new Map<string, number>();
const byFile = new Map<string, number>();
let total = 0;
let idle = 0;
let at = 0;
profile.samples.forEach((id, i) => {
  const us = profile.timeDeltas[i] ?? 0;
  at += us;
  if (at < skipUs) return;
  const frame = byId.get(id)!.callFrame;
  total += us;
  if (frame.functionName === '(idle)') idle += us;
  const file = fileOf(frame.url);
  const fn = `${frame.functionName || '(anonymous)'} ${file}:${frame.lineNumber + 1}`;
  byFunction.set(fn, (byFunction.get(fn) ?? 0) + us);
  byFile.set(file, (byFile.get(file) ?? 0) + us);
});
const busy = total - idle;
console.log(`${path}: ${(total / 1000).toFixed(0)} ms sampled, ${(busy / 1000).toFixed(0)} ms not idle`);
byFunction.delete(`(idle) (native):0`);
byFile.set('(native)', (byFile.get('(native)') ?? 0) - idle);
console.log(`\nself time by function (share of non-idle), top ${n}`);
for (const line of top(byFunction, n, busy)) console.log(line);
console.log(`\nself time by file (share of non-idle), top ${n}`);
for (const line of top(byFile, n, busy)) console.log(line);
