import t from 'tap';
import { z } from 'zod';
import { ToolManifest } from '../../../contracts/index.ts';
import {
  redact,
  ToolOutputError,
  ToolRegistry,
  toManifest,
  type ToolContext,
} from '../../../lib/tools/index.ts';
import { countdown, exampleTools, waitForCancel } from './index.ts';
import { checkKey, entropyBits, fingerprint } from './secretVaultCheck.ts';
import { testTools } from './testing.ts';
import { selectTools } from './worker.ts';

function ctx(overrides: Partial<ToolContext> = {}): ToolContext & { progressed: number[] } {
  const progressed: number[] = [];
  return {
    signal: new AbortController().signal,
    userId: 'u1',
    roles: ['admin'],
    executionId: '00000000-0000-5000-8000-000000000000',
    requestId: 'r1',
    correlationId: 'c1',
    progress: (p) => progressed.push(p.fraction),
    progressed,
    ...overrides,
  };
}

const registry = new ToolRegistry();
for (const tool of [...exampleTools, ...testTools]) registry.register(tool);
const run = (name: string, args: unknown, c: ToolContext = ctx()) => registry.resolve(name)!.run(args, c);

t.test(
  'every tool has a valid manifest that survives JSON and converts back for remote checks',
  async (t) => {
    // The built-in tools include these; more may be added without changing this test.
    const names = exampleTools.map((d) => d.name);
    for (const name of ['cost_analyzer', 'dataset_stats', 'admin_runtime_info', 'secret_vault_check'])
      t.ok(names.includes(name), `${name} is built in`);
    t.equal(new Set(names).size, names.length, 'no name twice');
    for (const def of [...exampleTools, ...testTools]) {
      const m = toManifest(def);
      t.ok(ToolManifest.safeParse(JSON.parse(JSON.stringify(m))).success, def.name);
      t.doesNotThrow(() => z.fromJSONSchema(m.inputSchema), `${def.name} input converts back`);
    }
    t.strictSame(registry.resolve('admin_runtime_info')?.manifest.roles, ['admin']);
    t.strictSame(registry.resolve('secret_vault_check')?.manifest.sensitive, {
      input: ['apiKey'],
      output: [],
    });
    t.strictSame(registry.resolve('echo')?.manifest.sensitive, { input: ['secret'], output: ['secret'] });
  },
);

t.test('every example tool declares the four MCP behaviour hints', async (t) => {
  for (const def of exampleTools) {
    const a = toManifest(def).annotations;
    t.ok(a?.title, `${def.name}: a title`);
    for (const hint of ['readOnlyHint', 'destructiveHint', 'idempotentHint', 'openWorldHint'] as const) {
      t.type(a?.[hint], 'boolean', `${def.name}: ${hint}`);
    }
    // The hints describe; they must not contradict the flags that decide.
    if (a?.readOnlyHint) t.equal(a.destructiveHint, false, `${def.name}: read-only is not destructive`);
    if (def.idempotent === true) t.equal(a?.idempotentHint, true, `${def.name}: idempotent is hinted so`);
  }
});

t.test('secret_vault_check: real checks, and the key never appears in the result', async (t) => {
  const key = 'ghp_' + 'aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5';
  const out = (await run('secret_vault_check', {
    apiKey: key,
    expectedFormat: 'github_token',
  })) as ReturnType<typeof checkKey>;
  t.equal(out.detectedFormat, 'github_token');
  t.equal(out.formatMatches, true);
  t.equal(out.length, 40);
  t.equal(out.fingerprint, fingerprint(key));
  t.match(out.fingerprint, /^sha256:[0-9a-f]{16}$/);
  t.strictSame(out.problems, []);
  t.notOk(JSON.stringify(out).includes(key), 'no trace of the key');
  t.notOk(JSON.stringify(out).includes(key.slice(4, 20)), 'not even part of it');
  t.equal(checkKey('AKIAIOSFODNN7EXAMPLE').detectedFormat, 'aws_access_key_id');
  t.ok(checkKey('AKIAIOSFODNN7EXAMPLE').problems.some((p) => /placeholder/.test(p)));
  t.equal(checkKey('sk_live_4eC39HqLyjWDarjtT1zdp7dc').detectedFormat, 'stripe_key');
  const weak = checkKey('aaaaaaaa key');
  t.equal(weak.strength, 'weak');
  t.ok(weak.problems.some((p) => /whitespace/.test(p)));
  t.ok(weak.problems.some((p) => /repeated/.test(p)));
  t.ok(weak.problems.some((p) => /shorter than 20/.test(p)));
  t.equal(entropyBits('aaaa'), 0);
  t.equal(entropyBits('abcd'), 8);
  // The dispatcher redacts the sensitive input before storing it.
  t.strictSame(
    redact({ apiKey: key }, registry.resolve('secret_vault_check')!.manifest.sensitive.input).value,
    { apiKey: '[REDACTED]' },
  );
});

t.test('admin_runtime_info reports this process', async (t) => {
  const out = (await run('admin_runtime_info', {}, ctx({ userId: 'root' }))) as Record<string, unknown>;
  t.equal(out['pid'], process.pid);
  t.equal(out['node'], process.version);
  t.equal(out['requestedBy'], 'root');
});

t.test('test tools behave as their names say', async (t) => {
  t.strictSame(await run('noop', {}), {});
  t.strictSame(await run('echo', { a: 1, secret: 's' }), { a: 1, secret: 's' });
  const c1 = (await run('cached_echo', { a: 1 })) as { args: unknown; runId: string };
  const c2 = (await run('cached_echo', { a: 1 })) as { args: unknown; runId: string };
  t.strictSame(c1.args, { a: 1 });
  t.not(c1.runId, c2.runId, 'each real run has its own runId');
  t.strictSame(await run('sleep', { ms: 5 }), { slept: 5 });
  await t.rejects(run('fail', { message: 'on purpose' }), /on purpose/);
  t.strictSame(await run('flaky', { fail: false }), { ok: true });
  await t.rejects(run('flaky', { fail: true }), /flaky failed/);
  t.type(await run('bad_output', {}).catch((e: unknown) => e), ToolOutputError);
  const started = Date.now();
  const hog = (await run('cpu_hog', { ms: 30 })) as { ms: number; loops: number };
  t.ok(Date.now() - started >= 30 && hog.loops > 0, 'it really spun');
  const c = ctx();
  t.strictSame(await run('progress', { steps: 4, delayMs: 1 }, c), { steps: 4 });
  t.strictSame(c.progressed, [0.25, 0.5, 0.75, 1]);
});

t.test('the demo tools: countdown reports each second; both stop at once when cancelled', async (t) => {
  const c = ctx();
  t.strictSame(await run('countdown', { seconds: 2 }, c), { counted: 2 });
  t.strictSame(c.progressed, [0.5, 1]);
  // The definitions' own run (the registry's would end on the signal even for a tool that ignored it).
  for (const tool of [countdown, waitForCancel]) {
    const controller = new AbortController();
    const pending = tool.run({ seconds: 300 }, ctx({ signal: controller.signal }));
    const reason = new Error('cancelled');
    setTimeout(() => controller.abort(reason), 10);
    const ended = (await pending.catch((e: unknown) => e)) as Error;
    t.equal(ended.name, 'AbortError', `${tool.name} stops waiting when cancelled`);
    t.equal(ended.cause, reason);
  }
});

t.test('sleep stops when its signal fires; hang does not, but run() still ends', async (t) => {
  for (const name of ['sleep', 'sleep_idempotent', 'hang']) {
    const controller = new AbortController();
    const pending = run(name, name === 'hang' ? {} : { ms: 60_000 }, ctx({ signal: controller.signal }));
    const reason = new Error('timeout');
    setTimeout(() => controller.abort(reason), 10);
    t.equal(await pending.catch((e: unknown) => e), reason, name);
  }
  t.equal(registry.resolve('sleep')?.manifest.idempotent, false);
  t.equal(registry.resolve('sleep_idempotent')?.manifest.idempotent, true);
});

t.test('selectTools: all example tools by default; test tools only when allowed', async (t) => {
  t.strictSame(
    selectTools(undefined).map((d) => d.name),
    exampleTools.map((d) => d.name),
  );
  t.strictSame(
    selectTools(['dataset_stats']).map((d) => d.name),
    ['dataset_stats'],
  );
  t.throws(() => selectTools(['hang']), /unknown tool\(s\) hang.*TOOLBUS_TEST_TOOLS=1/);
  t.strictSame(
    selectTools(['hang', 'echo'], true).map((d) => d.name),
    ['hang', 'echo'],
  );
  t.throws(() => selectTools(['nope'], true), /unknown tool\(s\) nope/);
});
