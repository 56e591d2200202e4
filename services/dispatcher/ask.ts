import { argsHash, askDigest, type ToolRequest, type ToolRequested } from '../../contracts/index.ts';
import { redact } from '../../lib/tools/index.ts';
import type { Handling } from './shell.ts';
import type { Execution } from './streams.ts';

/**
 * What a recorded request asked: enough to tell a repeat of its request id from that id reused for
 * something else (docs/dispatcher.md, "Idempotency"). The tool as named, and the hash of the
 * arguments as stored (sensitive fields redacted) with the names of the fields that were redacted,
 * so that a repeat's arguments are redacted alike, whatever the tool's manifest says today. `args`
 * is null when the arguments were not stored (a refusal): then only the tool is compared.
 */
export interface RecordedAsk {
  tool: string;
  args: string | null;
  redacted: string[];
  /**
   * The `askDigest` of the tool and arguments, when known whole: from the request that recorded
   * it, or from the event when nothing was redacted. An agent client's answer lookup says what
   * its request asks with it.
   */
  digest?: string;
}

/**
 * What a ToolRequested asked. Refusals (`argsOmitted`) and requests whose tool was not resolved
 * (`version` null: refused before, or given up) are compared by tool only: their arguments are
 * not stored, or not as the request sent them.
 */
export function askOfRequested(data: ToolRequested['data']): RecordedAsk {
  if (data.argsOmitted || data.version === null) return { tool: data.tool, args: null, redacted: [] };
  const whole = data.redacted.length === 0;
  return {
    tool: data.tool,
    args: argsHash(data.args),
    redacted: data.redacted,
    ...(whole ? { digest: askDigest({ tool: data.tool, args: data.args }) } : {}),
  };
}

/** What the recorded request asked, with its whole digest when this handling's request recorded it. */
export function askRecordedBy(data: ToolRequested['data'], request: ToolRequest | null): RecordedAsk {
  const recorded = askOfRequested(data);
  return request && recorded.args !== null ? { ...recorded, digest: askDigest(request) } : recorded;
}

/** What the execution's ToolRequested asked; null before it is recorded. */
export function askOfExecution(execution: Execution): RecordedAsk | null {
  const requested = execution.events.find((e) => e.type === 'ToolRequested');
  return requested?.type === 'ToolRequested' ? askOfRequested(requested.data) : null;
}

/** What the handled request asks: as recorded once it is, else as it would be recorded. */
export function askOfHandling(h: Handling): RecordedAsk | null {
  if (h.recordedAsk) return h.recordedAsk;
  if (!h.request) return null;
  const { value, redacted } = redact(h.request.args, h.tool?.manifest.sensitive.input ?? []);
  return { tool: h.request.tool, args: argsHash(value), redacted };
}

/**
 * Whether `request` uses the request id of `recorded` for another tool or other arguments. A
 * request that did not parse, or a record that is not known, is no conflict: the request id's
 * first answer stands. Values of redacted fields are not compared (they are not stored).
 */
export function isConflict(recorded: RecordedAsk | null | undefined, request: ToolRequest | null): boolean {
  if (!recorded || !request) return false;
  if (request.tool !== recorded.tool) return true;
  return recorded.args !== null && argsHash(redact(request.args, recorded.redacted).value) !== recorded.args;
}
