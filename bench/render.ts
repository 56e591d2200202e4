/**
 * `npx tsx bench/render.ts [name]`: writes bench/results/<name>.md again from <name>.json (default
 * `latest`) with the report code as it is now: the figures are the run's, only the texts around
 * them (what bounds a missed target, the notes the report adds) follow later edits.
 */
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { toMarkdown, type Baseline, type BenchResult, type Meta } from './lib/report.ts';

const name = process.argv[2] ?? 'latest';
const dir = fileURLToPath(new URL('./results/', import.meta.url));
const { meta, results } = JSON.parse(readFileSync(`${dir}${name}.json`, 'utf8')) as {
  meta: Meta;
  results: BenchResult[];
};
const before = `${dir}before.json`;
const baseline: Baseline | undefined =
  meta.mode === 'full' && existsSync(before)
    ? {
        file: 'bench/results/before.json',
        ...(JSON.parse(readFileSync(before, 'utf8')) as Omit<Baseline, 'file'>),
      }
    : undefined;
writeFileSync(`${dir}${name}.md`, toMarkdown(meta, results, baseline));
process.stdout.write(`bench/results/${name}.md written from ${name}.json\n`);
