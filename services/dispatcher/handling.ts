import {
  inboxPrefixOf,
  type ApprovalNeed,
  parseRequestSubject,
  type ErrorCode,
  type ExecutionCommand,
  type JsonObject,
  type JsonValue,
  omitArgs,
  type ToolEvent,
  type ToolManifest,
} from '../../contracts/index.ts';
import { redact, type RunnableTool } from '../../lib/tools/index.ts';
import { answered, refuseAttempt, REUSED, sendInterim } from './answer.ts';
import { approvalNeedOf, requestApproval, waitForApproval, waitsRefusal } from './approval.ts';
import { answerFromTerminal, spentRequestIdNote } from './answers.ts';
import { askRecordedBy, isConflict } from './ask.ts';
import { handleExecution, type HandleOptions } from './commands.ts';
import { errorInfo, type Disposition } from './delivery.ts';
import type { Remembered } from './guard.ts';
import { existing } from './recovery.ts';
import { elapsedMs, runTool } from './runner.ts';
import { abortForCancel, requestCancel, ShuttingDownError, type Handling, type Shell } from './shell.ts';
import { newExecution, type Execution } from './streams.ts';
import { markDispatcher } from '../../lib/diagnostics.ts';

/**
 * A delivery's flow once its user is known: refuse, or admit (Redis), then the commands of a new
 * execution (record and start, record from the cache, record cancelled), run, record the outcome,
 * answer. Every append goes through the command handler; what an existing execution needs is
 * recovery.ts's.
 */
export async function handleDelivery(
  shell: Shell,
  h: Handling,
  parseProblem: string | null,
): Promise<Disposition> {
  const { ref, request } = h;
  const { guard } = shell.o;
  const refused = refusalOf(shell, h, parseProblem);
  if (refused) {
    const prior = await guard.peek(ref.userId, ref.requestId);
    if (prior.kind === 'answer') return rememberedAnswer(shell, h, prior);
    if (prior.kind !== 'none' || h.delivery.redelivered) {
      const found = await recorded(shell, h);
      if (found) return existing(shell, h, found, undefined);
    }
    return refuse(shell, h, refused, request?.args ?? null, h.tool?.manifest);
  }
  const tool = h.tool!;
  // Cancelled while it waited in the intake: recorded cancelled, never run.
  if (h.cancel)
    return recordNew(shell, h, tool, [requestOf(tool.manifest, h), requestCancel(h.cancel, new Date())]);
  const manifest = tool.manifest;
  const approval = approvalNeedOf(shell, h, tool);
  // A call that needs approval is never answered from the cache: an approver sees every one.
  const cacheKey =
    manifest.cacheable && !approval
      ? guard.cacheKey(ref.userId, manifest.name, manifest.version, request!.args)
      : undefined;
  const slot = `${shell.o.dispatcherId}:${h.delivery.id}`;
  const admission = await guard.admit({
    userId: ref.userId,
    requestId: ref.requestId,
    slot,
    slotTtlMs: manifest.timeoutMs + shell.slotMarginMs,
    ...(cacheKey ? { cacheKey } : {}),
    ...(h.delivery.sentAt !== undefined ? { sentAt: h.delivery.sentAt } : {}),
  });
  markDispatcher(ref, 'admitted');
  if (admission.kind === 'go' || admission.kind === 'cached') h.slot = slot;
  h.cacheKey = cacheKey;
  // Seen before: the first execution's answer, no second run.
  if (admission.kind === 'answer') return rememberedAnswer(shell, h, admission);
  // Redis cannot vouch that this request is new (admitted before, Redis away, or JetStream
  // delivers it again): the event store decides, before anything is appended.
  if (admission.kind === 'seen' || admission.kind === 'unavailable' || h.delivery.redelivered) {
    const found = await recorded(shell, h);
    if (found) return existing(shell, h, found, tool);
  }
  switch (admission.kind) {
    case 'rate_limited':
      shell.o.metrics.rateLimited.inc({ limit: 'rate' });
      return refuse(
        shell,
        h,
        {
          code: 'RATE_LIMITED',
          message: `rate limit exceeded; retry in ${admission.retryAfterMs} ms`,
          details: { limit: 'rate', retryAfterMs: admission.retryAfterMs },
        },
        request!.args,
        manifest,
      );
    case 'busy':
      shell.o.metrics.rateLimited.inc({ limit: 'concurrency' });
      return refuse(
        shell,
        h,
        {
          code: 'RATE_LIMITED',
          message: 'too many executions of this user are running; retry when one has finished',
          details: { limit: 'concurrency' },
        },
        request!.args,
        manifest,
      );
    case 'cached':
      return fromCache(shell, h, tool, admission.result);
    case 'go':
    case 'seen':
    case 'unavailable':
      return execute(shell, h, tool, approval);
    default: {
      const unknown: never = admission;
      throw new Error(`unknown admission ${JSON.stringify(unknown)}`);
    }
  }
}

/** The answer Redis remembers for the request id, unless the id was first used for another request. */
function rememberedAnswer(shell: Shell, h: Handling, remembered: Remembered): Promise<Disposition> {
  if (isConflict(remembered.ask, h.request)) return Promise.resolve(refuseAttempt(shell, h, REUSED));
  return answered(shell, h, remembered.answer, false);
}

interface Refusal {
  code: ErrorCode;
  message: string;
  details?: Record<string, unknown>;
}

/** Why the request is refused before it is admitted (no I/O), or null. Resolves the tool. */
function refusalOf(shell: Shell, h: Handling, parseProblem: string | null): Refusal | null {
  const { ref, request, principal } = h;
  // Recorded under the request id, which answers every repeat from now on: the fix goes out under a
  // new one (said, since an agent that corrects a typo would otherwise be refused for ever).
  if (!request) {
    return {
      code: 'VALIDATION',
      message: `${parseProblem ?? 'invalid request'}${spentRequestIdNote(ref.requestId)}`,
    };
  }
  const { registry } = shell.o;
  const subjectUser = parseRequestSubject(h.delivery.subject)?.userId ?? '';
  const tool = registry.resolve(request.tool, request.version);
  h.tool = tool;
  h.toolLabel = request.tool;
  if (subjectUser !== ref.userId || (request.userId !== undefined && request.userId !== ref.userId)) {
    const claimed = subjectUser !== ref.userId ? subjectUser : request.userId;
    return {
      code: 'FORBIDDEN',
      message: `the token is for user ${ref.userId}; it may not act for ${JSON.stringify(claimed)}`,
    };
  }
  if (h.foreignReplyTo) {
    return {
      code: 'VALIDATION',
      message: `replyTo must be an inbox of the publishing agent (${inboxPrefixOf(
        parseRequestSubject(h.delivery.subject)?.agentId ?? 'anonymous',
      )}.*)`,
    };
  }
  if (!tool) {
    const known = registry.resolve(request.tool);
    return {
      code: 'UNKNOWN_TOOL',
      message: known
        ? `tool ${request.tool} has no version ${request.version}`
        : `no tool named ${request.tool}`,
    };
  }
  const missing = tool.manifest.roles.filter((r) => !principal.roles.includes(r));
  if (missing.length > 0) {
    return {
      code: 'FORBIDDEN',
      message: `${tool.manifest.name}@${tool.manifest.version} needs the role(s) ${missing.join(', ')}`,
    };
  }
  return null;
}

/** The execution as the store has it, or null when nothing of it is recorded. */
async function recorded(shell: Shell, h: Handling): Promise<Execution | null> {
  const execution = await shell.o.streams.load(h.ref);
  return execution.state.status === 'none' ? null : execution;
}

/** `Request` for this handling's arguments, redacted as the manifest says. */
function requestOf(manifest: ToolManifest, h: Handling): ExecutionCommand {
  const { value, redacted } = redact(h.request!.args, manifest.sensitive.input);
  return { type: 'Request', data: { tool: manifest.name, version: manifest.version, args: value, redacted } };
}

const isTerminal = (e: ToolEvent | undefined): e is ToolEvent =>
  e?.type === 'ToolCompleted' || e?.type === 'ToolFailed';

/**
 * Decides the commands of an execution believed new, in one append. Recorded already (a duplicate
 * won the race): what is recorded decides (recovery). Ended by them (a refusal, a cancel, a cache
 * hit): answered. Started by them: run.
 */
async function recordNew(
  shell: Shell,
  h: Handling,
  tool: RunnableTool | undefined,
  commands: ExecutionCommand[],
  options: HandleOptions = { onlyNew: true },
): Promise<Disposition> {
  const execution = newExecution(h.ref);
  const { appended } = await handleExecution(shell.o.streams, execution, commands, options);
  markDispatcher(h.ref, 'recorded');
  h.recorded = true;
  const requested = appended.find((e) => e.type === 'ToolRequested');
  if (requested?.type === 'ToolRequested') h.recordedAsk = askRecordedBy(requested.data, h.request);
  if (appended.length === 0) return existing(shell, h, execution, tool);
  const last = appended.at(-1);
  if (last?.type === 'ToolApprovalRequested') return waitForApproval(shell, h, execution, true);
  if (appended.some((e) => e.type === 'ToolExecuting')) {
    sendInterim(shell, h, 'requested');
    sendInterim(shell, h, 'executing');
  }
  if (isTerminal(last)) return answered(shell, h, answerFromTerminal(last), true);
  return runAttempt(shell, h, execution, tool!);
}

/**
 * Records a refusal (ToolRequested + ToolFailed in one append) and answers it. The arguments are
 * not stored, only their size and hash (`argsOmitted`, of the redacted form the event would have
 * held): a refused request never runs, and whatever it carries (up to 256 KiB, and refusals are
 * exactly what a flood gets) would otherwise grow the store at the dispatcher's pace. `args` is
 * null when the body did not parse (nothing to summarize: `{}` as before).
 */
function refuse(
  shell: Shell,
  h: Handling,
  refusal: Refusal,
  args: JsonObject | null,
  manifest: ToolManifest | undefined,
): Promise<Disposition> {
  // Before the tool is known, every argument is treated as sensitive.
  const { value } = args
    ? redact(args, manifest ? manifest.sensitive.input : Object.keys(args))
    : { value: null };
  const stored = value
    ? { args: {}, redacted: [], argsOmitted: omitArgs(value) }
    : { args: {}, redacted: [] };
  // Null when the tool was not resolved: the projector keeps such names out of per-tool models.
  const version = manifest?.version ?? null;
  const { code, message, details } = refusal;
  shell.o.log.info(
    {
      userId: h.ref.userId,
      requestId: h.ref.requestId,
      executionId: h.ref.executionId,
      tool: h.toolLabel,
      code,
    },
    'request refused',
  );
  return recordNew(
    shell,
    h,
    // Already recorded: a rate-limited duplicate may still finish what a dead dispatcher left.
    code === 'RATE_LIMITED' ? h.tool : undefined,
    [
      { type: 'Request', data: { tool: manifest?.name ?? h.toolLabel, version, ...stored } },
      { type: 'Refuse', data: details ? { code, message, details } : { code, message } },
    ],
  );
}

/** A cache hit: Requested, Executing, Completed{cached} in one append. */
function fromCache(shell: Shell, h: Handling, tool: RunnableTool, result: JsonValue): Promise<Disposition> {
  const manifest = tool.manifest;
  const started = performance.now();
  return recordNew(shell, h, tool, [
    requestOf(manifest, h),
    { type: 'StartAttempt', data: { runner: shell.o.dispatcherId, timeoutMs: manifest.timeoutMs } },
    {
      type: 'Complete',
      data: {
        result,
        redacted: manifest.sensitive.output.filter((f) => isRedactedField(result, f)),
        durationMs: elapsedMs(started),
        cached: true,
      },
    },
  ]);
}

/**
 * The normal path: Requested + Executing (one append), run, outcome (one append). A call that
 * needs approval is recorded Requested + ApprovalRequested instead, and waits (approval.ts).
 */
async function execute(
  shell: Shell,
  h: Handling,
  tool: RunnableTool,
  approval: ApprovalNeed | null,
): Promise<Disposition> {
  const manifest = tool.manifest;
  // A user's waits are bounded: each costs rechecks and a slot of the consumer every user shares.
  const tooMany = approval && !h.cancel ? await waitsRefusal(shell, h) : null;
  if (tooMany) {
    shell.o.metrics.rateLimited.inc({ limit: 'approvals' });
    return refuse(shell, h, tooMany, h.request!.args, manifest);
  }
  // Cancelled while it was admitted: nothing ran yet.
  const next: ExecutionCommand = h.cancel
    ? requestCancel(h.cancel, new Date())
    : approval
      ? requestApproval(h, approval, new Date())
      : { type: 'StartAttempt', data: { runner: shell.o.dispatcherId, timeoutMs: manifest.timeoutMs } };
  return recordNew(shell, h, tool, [requestOf(manifest, h), next]);
}

/**
 * Records a cancel that reached this handling in memory (before its execution was recorded) and,
 * when it runs, aborts it.
 */
export async function recordPendingCancel(shell: Shell, h: Handling, execution: Execution): Promise<void> {
  if (!h.cancel) return;
  await handleExecution(shell.o.streams, execution, requestCancel(h.cancel, new Date()));
  const state = execution.state;
  if (state.status === 'executing' && state.cancel) abortForCancel(h, state.cancel);
}

/**
 * Runs the attempt the execution is in (its last ToolExecuting) and records its outcome. The
 * outcome's append must happen (the result is only in memory): it is retried while the store is
 * away, and given up only when shutting down (the request then comes back: re-run or INTERRUPTED).
 */
export async function runAttempt(
  shell: Shell,
  h: Handling,
  execution: Execution,
  tool: RunnableTool,
): Promise<Disposition> {
  await recordPendingCancel(shell, h, execution);
  const state = execution.state;
  if (state.status !== 'executing') return existing(shell, h, execution, tool);
  if (state.cancel) abortForCancel(h, state.cancel);
  const attempt = state.attempt;
  const outcome = await runTool(shell, h, tool);
  markDispatcher(h.ref, 'ran');
  let appended: ToolEvent[];
  for (let wait = 200; ; wait = Math.min(wait * 2, 5_000)) {
    try {
      ({ appended } = await handleExecution(shell.o.streams, execution, outcome, { attempt }));
      markDispatcher(h.ref, 'completed');
      break;
    } catch (e) {
      if (shell.closing()) throw new ShuttingDownError();
      shell.o.log.error(
        { err: errorInfo(e), userId: h.ref.userId, executionId: h.ref.executionId },
        'outcome append failed; retrying',
      );
      await new Promise((r) => setTimeout(r, wait));
    }
  }
  // Someone else ended it (a dispatcher that took it for dead): theirs is the answer.
  const last = appended.at(-1);
  if (!isTerminal(last)) return existing(shell, h, execution, tool);
  return answered(shell, h, answerFromTerminal(last), true);
}

const isRedactedField = (value: unknown, field: string): boolean =>
  value !== null &&
  typeof value === 'object' &&
  !Array.isArray(value) &&
  (value as Record<string, unknown>)[field] === '[REDACTED]';
