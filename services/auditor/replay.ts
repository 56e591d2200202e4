import { EVENT_TYPES, userStream, type ToolEvent } from '../../contracts/index.ts';
import type { EventStore, Json } from '../../lib/eventstore/types.ts';
import { fromRecorded } from '../../lib/toolEvents.ts';

/**
 * Replay of one user's history, as a stream: the store is read page by page, at most one page
 * ahead of the events handed on, so a long history never sits whole in memory.
 */
export interface ReplayRange {
  /** Inclusive. */
  fromRevision?: number;
  /** Inclusive. */
  toRevision?: number;
  /** Inclusive, on the event's `occurredAt` (the stored time when the event does not parse). */
  from?: Date;
  /** Inclusive. */
  to?: Date;
}

export type ReplayItem =
  | {
      revision: number;
      recordedAt: Date;
      event: ToolEvent;
      /** The tool of the event's execution, when its request lies inside the replayed range. */
      tool: string | null;
    }
  | {
      revision: number;
      recordedAt: Date;
      /** Why the stored event is not a valid ToolEvent; it is replayed as stored. */
      invalid: string;
      raw: { id: string; type: string; data: Json; metadata: Json };
    };

/** The replayed events in revision order. `tools` of ended executions are forgotten at once. */
export async function* replayHistory(
  store: EventStore,
  userId: string,
  range: ReplayRange = {},
): AsyncGenerator<ReplayItem> {
  const from = range.fromRevision ?? 0;
  if (range.toRevision !== undefined && range.toRevision < from) return;
  const maxCount = range.toRevision === undefined ? undefined : range.toRevision - from + 1;
  const fromMs = range.from?.getTime() ?? -Infinity;
  const toMs = range.to?.getTime() ?? Infinity;
  const tools = new Map<string, string>();
  for await (const r of store.readStream(userStream(userId), {
    fromRevision: from,
    ...(maxCount ? { maxCount } : {}),
  })) {
    const parsed = fromRecorded(r);
    if (!parsed.ok) {
      const t = r.created.getTime();
      if (t < fromMs || t > toMs) continue;
      yield {
        revision: r.revision,
        recordedAt: r.created,
        invalid: parsed.reason,
        raw: { id: r.id, type: r.type, data: r.data, metadata: r.metadata },
      };
      continue;
    }
    const event = parsed.event;
    const executionId = event.metadata.executionId;
    let tool: string | null;
    if (event.type === 'ToolRequested') {
      tool = event.data.version ? `${event.data.tool}@${event.data.version}` : event.data.tool;
      tools.set(executionId, tool);
    } else {
      tool = tools.get(executionId) ?? null;
      if (event.type === 'ToolCompleted' || event.type === 'ToolFailed') tools.delete(executionId);
    }
    const t = Date.parse(event.metadata.occurredAt);
    if (t < fromMs || t > toMs) continue;
    yield { revision: r.revision, recordedAt: r.created, event, tool };
  }
}

/** One JSON object per line: `{revision, recordedAt, event}` or `{revision, recordedAt, invalid, raw}`. */
export function toNdjson(item: ReplayItem): string {
  if ('invalid' in item) {
    return `${JSON.stringify({ revision: item.revision, recordedAt: item.recordedAt.toISOString(), invalid: item.invalid, raw: item.raw })}\n`;
  }
  return `${JSON.stringify({ revision: item.revision, recordedAt: item.recordedAt.toISOString(), event: item.event })}\n`;
}

const TOOL_WIDTH = 28;
/** As wide as the longest event type (ToolApprovalRequested), so that every column lines up. */
const TYPE_WIDTH = Math.max(...EVENT_TYPES.map((type) => type.length));

export const TIMELINE_HEADER = `${'REVISION'.padStart(8)}  ${'TIME'.padEnd(24)}  ${'TYPE'.padEnd(TYPE_WIDTH)}  ${'TOOL'.padEnd(TOOL_WIDTH)}  ${'EXECUTION'.padEnd(36)}  OUTCOME\n`;

/** One line per event: revision, time, type, tool, execution id, outcome or error code. */
export function toTimelineLine(item: ReplayItem): string {
  const rev = String(item.revision).padStart(8);
  if ('invalid' in item) {
    const type = item.raw.type.padEnd(TYPE_WIDTH);
    return `${rev}  ${item.recordedAt.toISOString().padEnd(24)}  ${type}  ${'?'.padEnd(TOOL_WIDTH)}  ${'?'.padEnd(36)}  INVALID ${oneLine(item.invalid)}\n`;
  }
  const e = item.event;
  const tool = (item.tool ?? '?').padEnd(TOOL_WIDTH);
  return `${rev}  ${e.metadata.occurredAt.padEnd(24)}  ${e.type.padEnd(TYPE_WIDTH)}  ${tool}  ${e.metadata.executionId}  ${outcomeOf(e)}\n`;
}

function outcomeOf(e: ToolEvent): string {
  switch (e.type) {
    case 'ToolRequested':
      return `requested (request ${e.metadata.requestId})`;
    case 'ToolExecuting':
      return `executing, attempt ${e.data.attempt} on ${e.data.runner}`;
    case 'ToolCompleted':
      return `completed in ${formatMs(e.data.durationMs)} ms${e.data.cached ? ' (cached)' : ''}`;
    case 'ToolFailed':
      return `failed ${e.data.error.code}: ${oneLine(e.data.error.message).slice(0, 120)}`;
    case 'ToolCancelRequested':
      return `cancel requested by ${e.data.by.userId}${e.data.by.admin ? ' (admin)' : ''}: ${oneLine(e.data.reason).slice(0, 120)}`;
    case 'ToolApprovalRequested':
      return `awaiting approval by ${e.data.approverRoles.join('|')} until ${e.data.deadline}`;
    case 'ToolApproved':
      return `approved by ${e.data.approverId} (${e.data.approverRole})`;
    case 'ToolDenied':
      return `denied by ${e.data.approverId} (${e.data.approverRole}): ${oneLine(e.data.reason).slice(0, 120)}`;
    default: {
      const unknown: never = e;
      return String(unknown);
    }
  }
}

/** Whole milliseconds from 100 on, two decimals at most below. */
const formatMs = (ms: number): string => (ms >= 100 ? String(Math.round(ms)) : String(Number(ms.toFixed(2))));

const oneLine = (s: string): string => s.replace(/\s+/g, ' ');
