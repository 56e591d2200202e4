/**
 * Where a V8 CPU profile (`--cpu-prof`, `BENCH_PROFILE=…`) spends its time: self time by
 * function and by file, the top N of each, as a share of all samples and in ms.
 *
 *   npx tsx bench/profile-top.ts <file.cpuprofile> [top=30] [skipS=0]
 *
 * `skipS` leaves out the profile's first seconds (start-up, warm-up: see bench/cpu-dispatch.ts).
 * Files under node_modules are grouped by package, Node's own by `node:`; (program) and
 * (garbage collector) stay as V8 names them. Benchmark 2 puts the same summary of the
 * dispatcher in its report (bench/lib/profile.ts).
 */
import { readFileSync } from 'node:fs';
import { summarise, type CpuProfile, type Ranked } from './lib/profile.ts';

const lines = (ranked: Ranked, busyUs: number): string[] =>
  ranked.map(
    ([k, us]) =>
      `${((100 * us) / busyUs).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(7)} ms  ${k}`,
  );

const [path, nArg, skipArg] = process.argv.slice(2);
if (!path) {
  console.error('usage: npx tsx bench/profile-top.ts <file.cpuprofile> [top=30] [skipS=0]');
  process.exit(2);
}
const n = Number(nArg ?? 30);
const s = summarise(JSON.parse(readFileSync(path, 'utf8')) as CpuProfile, n, Number(skipArg ?? 0) * 1e6);
console.log(
  `${path}: ${(s.sampledUs / 1000).toFixed(0)} ms sampled, ${(s.busyUs / 1000).toFixed(0)} ms not idle`,
);
console.log(`\nself time by function (share of non-idle), top ${n}`);
for (const line of lines(s.byFunction, s.busyUs)) console.log(line);
console.log(`\nself time by file (share of non-idle), top ${n}`);
for (const line of lines(s.byFile, s.busyUs)) console.log(line);
