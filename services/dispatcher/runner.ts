import {
  canonicalJson,
  JsonValue,
  type CancelInfo,
  type ErrorCode,
  type ExecutionCommand,
  type JsonObject,
} from '../../contracts/index.ts';
import { redact, ToolRunError, type RunnableTool, type ToolContext } from '../../lib/tools/index.ts';
import { sendProgress } from './answer.ts';
import { createProgressReporter } from './progress.ts';
import { ToolCancelledError, type Handling, type Shell } from './shell.ts';

/** Largest result stored and answered (its canonical JSON); larger is OUTPUT_INVALID. */
/**
 * Milliseconds since `started` (a `performance.now()`), to the microsecond: what is recorded as
 * `durationMs` and shown to users, so without the fifteen decimals of a float subtraction.
 */
export const elapsedMs = (started: number): number => Math.round((performance.now() - started) * 1000) / 1000;

export const MAX_RESULT_BYTES = 512 * 1024;

/** How an attempt ended, as the command that records it. */
export type AttemptOutcome = Extract<ExecutionCommand, { type: 'Complete' | 'Fail' }>;

class ToolTimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`the tool did not finish within ${timeoutMs} ms`);
    this.name = 'ToolTimeoutError';
  }
}

/** The error a running execution is recorded with when its recorded cancel stopped it. */
export function cancelledWhileRunning(cancel: CancelInfo): {
  code: 'CANCELLED';
  message: string;
  details: Record<string, unknown>;
} {
  return {
    code: 'CANCELLED',
    message: `cancelled by ${cancel.by.userId} while it ran`,
    details: { cancelledBy: cancel.by.userId, admin: cancel.by.admin, reason: cancel.reason },
  };
}

/**
 * The one tool runner, for in-process tools and tools on workers alike (a worker's tool is a
 * `RunnableTool` whose `run` goes over NATS, lib/tools/remote.ts): runs the tool with its timeout,
 * its abort signal (fired by a timeout or a recorded cancel), progress (rate-limited), and checks
 * its output (JSON, size, redaction). Never throws: the outcome is a Complete or Fail command.
 */
export async function runTool(shell: Shell, h: Handling, tool: RunnableTool): Promise<AttemptOutcome> {
  const manifest = tool.manifest;
  const args = h.request!.args;
  const controller = new AbortController();
  const reporter = createProgressReporter(
    (p) => sendProgress(shell, h, p),
    shell.o.progressIntervalMs ?? 100,
  );
  const ctx: ToolContext = {
    signal: controller.signal,
    userId: h.ref.userId,
    roles: h.principal.roles,
    executionId: h.ref.executionId,
    requestId: h.ref.requestId,
    correlationId: h.ref.correlationId,
    progress: (p) => reporter.report(p),
  };
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  let onCancel: (() => void) | undefined;
  try {
    const result = await new Promise<unknown>((resolve, reject) => {
      timer = setTimeout(() => {
        const e = new ToolTimeoutError(manifest.timeoutMs);
        controller.abort(e);
        reject(e);
      }, manifest.timeoutMs);
      // A recorded cancel fires the tool's signal and ends the run at once, whatever the tool does.
      onCancel = () => {
        const e = h.cancelled.signal.reason as Error;
        controller.abort(e);
        reject(e);
      };
      if (h.cancelled.signal.aborted) onCancel();
      else h.cancelled.signal.addEventListener('abort', onCancel, { once: true });
      Promise.resolve()
        .then(() => tool.run(args, ctx))
        .then(resolve, reject);
    });
    const durationMs = elapsedMs(started);
    if (durationMs > manifest.timeoutMs) {
      // It finished, but late: a tool that blocked the event loop past its deadline (the timer
      // could not fire). The deadline is what counts.
      return fail('TIMEOUT', `the tool did not finish within ${manifest.timeoutMs} ms`, durationMs, {
        timeoutMs: manifest.timeoutMs,
      });
    }
    const json = JsonValue.safeParse(result);
    if (!json.success)
      return fail('OUTPUT_INVALID', `${manifest.name} returned a value that is not JSON`, durationMs);
    const size = Buffer.byteLength(canonicalJson(json.data));
    if (size > MAX_RESULT_BYTES) {
      return fail(
        'OUTPUT_INVALID',
        `${manifest.name} returned ${size} bytes; the limit is ${MAX_RESULT_BYTES}`,
        durationMs,
      );
    }
    const { value, redacted } = redact(json.data, manifest.sensitive.output);
    // The last progress held back by the rate limit goes out before the answer.
    reporter.stop(true);
    return { type: 'Complete', data: { result: value, redacted, durationMs, cached: false } };
  } catch (e) {
    const durationMs = elapsedMs(started);
    if (e instanceof ToolTimeoutError)
      return fail('TIMEOUT', e.message, durationMs, { timeoutMs: e.timeoutMs });
    if (e instanceof ToolCancelledError) {
      const error = cancelledWhileRunning(e.cancel);
      return fail(error.code, error.message, durationMs, error.details);
    }
    // An error message may quote an argument: sensitive values are cut out of it.
    const secrets = sensitiveValues(args, manifest.sensitive.input);
    if (e instanceof ToolRunError) {
      return fail(e.code, scrub(e.message, secrets), durationMs, e.details && scrubJson(e.details, secrets));
    }
    return fail('TOOL_ERROR', scrub(e instanceof Error ? e.message : String(e), secrets), durationMs);
  } finally {
    clearTimeout(timer);
    if (onCancel) h.cancelled.signal.removeEventListener('abort', onCancel);
    reporter.stop();
    if (!controller.signal.aborted) controller.abort(new Error('execution ended'));
  }
}

function fail(
  code: ErrorCode,
  message: string,
  durationMs: number,
  details?: Record<string, unknown>,
): AttemptOutcome {
  const error = {
    code,
    message: message.length > 2000 ? `${message.slice(0, 1999)}…` : message,
    ...(details ? { details } : {}),
  };
  return { type: 'Fail', data: { error, durationMs } };
}

/** The string values of an object's sensitive fields (short ones are too common to cut out). */
function sensitiveValues(args: JsonObject, fields: readonly string[]): string[] {
  return fields.flatMap((f) => {
    const v = Object.prototype.hasOwnProperty.call(args, f) ? args[f] : undefined;
    if (v === undefined || v === null) return [];
    const text = typeof v === 'string' ? v : JSON.stringify(v);
    return text.length >= 4 ? [text] : [];
  });
}

export function scrub(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) out = out.split(s).join('[REDACTED]');
  return out;
}

function scrubJson(value: Record<string, unknown>, secrets: readonly string[]): Record<string, unknown> {
  if (secrets.length === 0) return value;
  try {
    const text = JSON.stringify(value);
    const cleaned = scrub(
      text,
      secrets.map((s) => JSON.stringify(s).slice(1, -1)),
    );
    return cleaned === text ? value : (JSON.parse(cleaned) as Record<string, unknown>);
  } catch {
    // details that do not survive the round trip are dropped rather than risk a secret
    return {};
  }
}
