import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { JsonValue } from '../../../contracts/index.ts';
import { defineTool, type ToolDefinition } from '../../../lib/tools/index.ts';

/**
 * Tools the test suites use to drive the dispatcher through every path: success, failure,
 * timeouts, cancellation, bad output, progress, secrets. They are real tools (they really sleep,
 * spin, fail), registered only when TOOLBUS_TEST_TOOLS=1. Their timeouts are short on purpose;
 * docs/tools.md lists them.
 */

const Ms = (max: number) => z.number().int().min(0).max(max);

export const noop = defineTool({
  name: 'noop',
  version: '1.0.0',
  description: 'Test tool: does nothing and returns {}.',
  input: z.object({}),
  output: z.object({}),
  timeoutMs: 5_000,
  idempotent: true,
  async run() {
    return {};
  },
});

const EchoArgs = z.looseObject({ secret: z.string().optional() });

export const echo = defineTool({
  name: 'echo',
  version: '1.0.0',
  description:
    'Test tool: returns its arguments. The field `secret` is sensitive (redacted in events and logs).',
  input: EchoArgs,
  output: z.looseObject({ secret: z.string().optional() }),
  sensitive: { input: ['secret'], output: ['secret'] },
  timeoutMs: 5_000,
  idempotent: true,
  async run(args) {
    return args;
  },
});

export const cachedEcho = defineTool({
  name: 'cached_echo',
  version: '1.0.0',
  description:
    'Test tool: cacheable. Returns its arguments under `args` and a fresh `runId` per real run, so a cached answer shows the same runId.',
  input: z.record(z.string(), JsonValue),
  output: z.object({ args: z.record(z.string(), JsonValue), runId: z.string() }),
  timeoutMs: 5_000,
  idempotent: true,
  cacheable: true,
  async run(args) {
    return { args, runId: randomUUID() };
  },
});

const SleepArgs = z.object({ ms: Ms(600_000) });
const SleepOut = z.object({ slept: z.number().int() });
const sleepRun = async ({ ms }: z.infer<typeof SleepArgs>, ctx: { signal: AbortSignal }) => {
  await sleep(ms, undefined, { signal: ctx.signal });
  return { slept: ms };
};

export const sleepTool = defineTool({
  name: 'sleep',
  version: '1.0.0',
  description:
    'Test tool: waits `ms` milliseconds (stops when its signal fires). Not idempotent. Timeout 5 s.',
  input: SleepArgs,
  output: SleepOut,
  timeoutMs: 5_000,
  idempotent: false,
  run: sleepRun,
});

export const sleepIdempotent = defineTool({
  name: 'sleep_idempotent',
  version: '1.0.0',
  description: 'Test tool: as `sleep`, but idempotent (safe to re-run after a crash). Timeout 5 s.',
  input: SleepArgs,
  output: SleepOut,
  timeoutMs: 5_000,
  idempotent: true,
  run: sleepRun,
});

export const fail = defineTool({
  name: 'fail',
  version: '1.0.0',
  description: 'Test tool: always throws (TOOL_ERROR), with `message` if given.',
  input: z.object({ message: z.string().max(500).optional() }),
  output: z.object({}),
  timeoutMs: 5_000,
  idempotent: true,
  async run({ message }) {
    throw new Error(message ?? 'the fail tool failed, as it always does');
  },
});

export const flaky = defineTool({
  name: 'flaky',
  version: '1.0.0',
  description: 'Test tool: throws when `fail` is true, otherwise returns { ok: true }.',
  input: z.object({ fail: z.boolean().default(false) }),
  output: z.object({ ok: z.literal(true) }),
  timeoutMs: 5_000,
  idempotent: true,
  async run(args) {
    if (args.fail) throw new Error('flaky failed because it was asked to');
    return { ok: true as const };
  },
});

export const badOutput = defineTool({
  name: 'bad_output',
  version: '1.0.0',
  description: 'Test tool: declares { value: number } but returns { wrong: "shape" } (OUTPUT_INVALID).',
  input: z.object({}),
  output: z.object({ value: z.number() }),
  timeoutMs: 5_000,
  idempotent: true,
  async run() {
    return { wrong: 'shape' } as unknown as { value: number };
  },
});

export const hang = defineTool({
  name: 'hang',
  version: '1.0.0',
  description: 'Test tool: never finishes and ignores its signal. Timeout 1.5 s.',
  input: z.object({}),
  output: z.object({}),
  timeoutMs: 1_500,
  idempotent: false,
  run() {
    return new Promise<Record<string, never>>(() => undefined);
  },
});

export const cpuHog = defineTool({
  name: 'cpu_hog',
  version: '1.0.0',
  description:
    'Test tool: spins the CPU for `ms` milliseconds without yielding (blocks its process). Timeout 2 s.',
  input: z.object({ ms: Ms(60_000) }),
  output: z.object({ ms: z.number().int(), loops: z.number().int() }),
  timeoutMs: 2_000,
  idempotent: false,
  async run({ ms }) {
    const end = Date.now() + ms;
    let loops = 0;
    while (Date.now() < end) loops++;
    return { ms, loops };
  },
});

export const progress = defineTool({
  name: 'progress',
  version: '1.0.0',
  description:
    'Test tool: takes `steps` steps of `delayMs` each, reporting progress after each, then returns { steps }.',
  input: z.object({ steps: z.number().int().min(1).max(100).default(5), delayMs: Ms(5_000).default(50) }),
  output: z.object({ steps: z.number().int() }),
  timeoutMs: 10_000,
  idempotent: true,
  async run({ steps, delayMs }, ctx) {
    for (let i = 1; i <= steps; i++) {
      await sleep(delayMs, undefined, { signal: ctx.signal });
      ctx.progress({ fraction: i / steps, message: `step ${i} of ${steps}` });
    }
    return { steps };
  },
});

/** Test tool: `echo` behind an approver (role `approver`, ten minutes). */
export const guardedEcho = defineTool({
  name: 'guarded_echo',
  version: '1.0.0',
  description:
    'Test tool: returns its arguments once an approver (role approver) allows it. `secret` is sensitive.',
  input: EchoArgs,
  output: z.looseObject({ secret: z.string().optional() }),
  sensitive: { input: ['secret'], output: ['secret'] },
  timeoutMs: 5_000,
  idempotent: true,
  approval: { approverRoles: ['approver'], timeoutMs: 600_000 },
  async run(args) {
    return args;
  },
});

/** Test tool: `guarded_echo` whose approval expires after one second. */
export const guardedEchoBrief = defineTool({
  ...guardedEcho,
  name: 'guarded_echo_brief',
  description: 'Test tool: like guarded_echo, but nobody has more than a second to approve it.',
  approval: { approverRoles: ['approver'], timeoutMs: 1_000 },
});

/** Test tool: annotated destructive and declaring no policy, so the operator's default applies. */
export const destructiveNoop = defineTool({
  name: 'destructive_noop',
  version: '1.0.0',
  description: 'Test tool: pretends to delete something (destructiveHint) and returns {}.',
  input: z.object({}),
  output: z.object({}),
  timeoutMs: 5_000,
  annotations: { readOnlyHint: false, destructiveHint: true },
  async run() {
    return {};
  },
});

export const testTools: ToolDefinition[] = [
  guardedEcho,
  guardedEchoBrief,
  destructiveNoop,
  noop,
  echo,
  cachedEcho,
  sleepTool,
  sleepIdempotent,
  fail,
  flaky,
  badOutput,
  hang,
  cpuHog,
  progress,
];
