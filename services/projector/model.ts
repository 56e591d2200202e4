import {
  canonicalJson,
  EVENT_TYPES,
  UNKNOWN_TOOL_LABEL,
  userStream,
  type ErrorCode,
  type ExecutionStatus as DeciderStatus,
  type ToolEvent,
} from '../../contracts/index.ts';
import {
  evolve,
  eventProblem,
  initialState,
  isTerminalState,
  type ExecutionState as DeciderState,
} from '../../contracts/execution.ts';
import {
  comparePositions,
  formatPosition,
  parsePosition,
  type RecordedEvent,
} from '../../lib/eventstore/types.ts';
import { parseRecorded, type Parsed } from '../../lib/threads/events.ts';
import { bucketOf, emptyHistogram, mergeHistograms } from './histogram.ts';

/**
 * The read models as plain rows, and the one pure function that changes them. The SQL runner and
 * the in-memory replay both use `applyEvent`: the runner loads the rows a batch touches, applies
 * the batch here and writes the rows back, so the tables are by construction what a replay gives.
 */

/** The decider's statuses (contracts/execution.ts) but `none`: a row exists once something was recorded. */
export type ExecutionStatus = Exclude<DeciderStatus, 'none'>;

/** Timestamps are ISO strings (UTC, milliseconds), so rows compare and serialize exactly. */
export interface ExecutionRow {
  executionId: string;
  userId: string;
  requestId: string;
  correlationId: string;
  /** Null only when the execution's ToolRequested was skipped (unknown to this reader). */
  tool: string | null;
  version: string | null;
  status: ExecutionStatus;
  /** Highest ToolExecuting attempt; 0 when it never ran. */
  attempts: number;
  /** When it was requested (or, without a readable ToolRequested, when it was first seen). */
  requestedAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  durationMs: number | null;
  errorCode: string | null;
  errorMessage: string | null;
  cached: boolean | null;
  /** Events applied to this row; equals the execution's events in the store (a double apply shows). */
  eventCount: number;
  lastRevision: number;
  /** When a cancel was asked for (ToolCancelRequested's requestedAt); null when nobody asked. */
  cancelRequestedAt: string | null;
  /**
   * The decider's state (contracts/execution.ts) after the events applied, while the execution is
   * open: the next event is judged by `eventProblem` and folded by `evolve` from it. Null once it
   * ended (status and error code say all that matters then: nothing may follow), and in rows written
   * before the column existed (see `deciderStateOf`).
   */
  state: DeciderState | null;
}

/** Outcome classes shared by user activity and tool metrics. */
export type Outcome = 'completed' | 'failed' | 'refused';

export interface UserActivityRow {
  userId: string;
  /** Executions requested. In flight = executions - completed - failed - refused. */
  executions: number;
  completed: number;
  /** Ran and failed. */
  failed: number;
  /** Failed before running (no ToolExecuting): refused by validation, authorization, limits. */
  refused: number;
  events: number;
  firstActivityAt: string;
  lastActivityAt: string;
}

export interface ToolMetricsRow {
  tool: string;
  /** Start of the minute (UTC) for per-minute rows; null for the all-time row. */
  minute: string | null;
  completed: number;
  failed: number;
  refused: number;
  cached: number;
  /** Failures and refusals by error code. Keys sorted. */
  errorCodes: Record<string, number>;
  latencyCount: number;
  latencySumMs: number;
  latencyMaxMs: number | null;
  /** Counts per LATENCY_BOUNDS_MS bucket (see histogram.ts). */
  latencyHistogram: number[];
}

export interface SkippedRow {
  streamId: string;
  revision: number;
  /** formatPosition of the event; null when replayed from envelopes without positions. */
  position: string | null;
  eventId: string;
  eventType: string;
  reason: string;
  /** When the store recorded it; null when unknown. */
  recordedAt: string | null;
}

/** A terminal event's contribution to its tool's metrics. */
export interface Sample {
  tool: string;
  minute: string;
  outcome: Outcome;
  code: string | null;
  durationMs: number | null;
  cached: boolean;
}

/** The rows a batch reads and writes: executions and users by key. */
export interface ExecutionState {
  executions: Map<string, ExecutionRow>;
  users: Map<string, UserActivityRow>;
}

export type ApplyResult = { applied: true; sample: Sample | null } | { applied: false; reason: string };

/**
 * An instant as `Date.toISOString` writes it. The events' instants are written that way already
 * (the dispatcher writes them so): one that is, and names a real day and time, is its own answer,
 * without the Date parsed and formatted again for every event of a projection or a rebuild.
 */
export function isoOf(instant: string): string {
  return isCanonicalIso(instant) ? instant : new Date(instant).toISOString();
}

const CANONICAL_ISO = /^(\d{4})-(\d\d)-(\d\d)T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z$/;
const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** `YYYY-MM-DDTHH:mm:ss.sssZ` naming a day the month has (a Date would move 30 February to March). */
function isCanonicalIso(text: string): boolean {
  const m = CANONICAL_ISO.exec(text);
  if (!m) return false;
  const year = Number(m[1]);
  const month = Number(m[2]);
  const day = Number(m[3]);
  if (month < 1 || month > 12 || day < 1) return false;
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  return day <= (month === 2 && leap ? 29 : DAYS_IN_MONTH[month - 1]!);
}

/**
 * Text as the read models can hold it. Events may carry any JSON string (an error message quoting
 * a hostile argument, a correlation id chosen by an agent), but PostgreSQL's jsonb and text refuse
 * NUL and unpaired UTF-16 surrogates: one such event would stop the projection for everyone. Both
 * become U+FFFD here, in the model, so the runner and a replay agree.
 */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;
export const storable = (text: string): string =>
  UNSTORABLE.test(text) ? text.replace(LONE_SURROGATE, '\ufffd').replaceAll('\u0000', '\ufffd') : text;
const storableOrNull = (text: string | null): string | null => (text === null ? null : storable(text));
export const minuteOf = (iso: string): string => {
  if (isCanonicalIso(iso)) return `${iso.slice(0, 17)}00.000Z`;
  const d = new Date(iso);
  d.setUTCSeconds(0, 0);
  return d.toISOString();
};
const maxIso = (a: string, b: string): string => (a >= b ? a : b);
const minIso = (a: string, b: string): string => (a <= b ? a : b);

/**
 * The tool an execution counts under in the per-tool models: its name when the dispatcher resolved
 * it to a registered tool, else UNKNOWN_TOOL_LABEL. The projector does not know the registry; the
 * event says it: the dispatcher records `version: null` exactly when no registered tool matched
 * (and builds before that rule recorded an unknown tool's refusal as UNKNOWN_TOOL). Agents choose
 * tool names, so a row per unknown name would let anyone grow these tables without bound. The
 * execution's own row keeps the name as it was asked.
 */
export function metricsToolOf(row: Pick<ExecutionRow, 'tool' | 'version' | 'errorCode'>): string {
  if (row.tool === null || row.version === null || row.errorCode === 'UNKNOWN_TOOL')
    return UNKNOWN_TOOL_LABEL;
  return row.tool;
}

/** A string `storable` may change (a surrogate, even a paired one, sends it the long way). */
// eslint-disable-next-line no-control-regex -- NUL is what jsonb refuses
const UNSTORABLE = /[\u0000\ud800-\udfff]/;

/**
 * Every string in a decider state made storable (see `storable`): the state is kept as jsonb. A
 * state with nothing to change (almost every one) is returned as it is, not copied: it is built
 * per event, on the projector's and the rebuild's hot path.
 */
function storableState(state: DeciderState): DeciderState {
  return needsWork(state) ? (storableCopy(state) as DeciderState) : state;
}

function needsWork(v: unknown): boolean {
  if (typeof v === 'string') return UNSTORABLE.test(v);
  if (Array.isArray(v)) return v.some(needsWork);
  if (v !== null && typeof v === 'object') {
    for (const k in v) if (needsWork((v as Record<string, unknown>)[k])) return true;
  }
  return false;
}

function storableCopy(v: unknown): unknown {
  if (typeof v === 'string') return storable(v);
  if (Array.isArray(v)) return v.map(storableCopy);
  if (v !== null && typeof v === 'object')
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, storableCopy(x)]));
  return v;
}

/**
 * The decider's state of an execution as its row holds it. A row holds it while the execution is
 * open; an ended row's state is rebuilt from its columns (only its status matters to what may
 * follow). A row written before the `state` column existed (projector migration 3) gets its state
 * rebuilt from its columns too, as far as they go: they do not hold an approval asked for, its
 * deadline or approvers, nor the running attempt's runner, so an approval of a call that was
 * already waiting is refused. A rebuild (rebuild.ts) re-folds every execution from the store.
 */
export function deciderStateOf(row: ExecutionRow | undefined): DeciderState {
  if (!row) return initialState();
  if (row.state) return row.state;
  const known = {
    tool: row.tool ?? '',
    version: row.version,
    attempts: row.attempts,
    approval: null,
    cancel: row.cancelRequestedAt
      ? { by: { userId: row.userId, admin: false }, reason: '', requestedAt: row.cancelRequestedAt }
      : null,
  };
  switch (row.status) {
    case 'completed':
      return { ...known, status: 'completed' };
    case 'failed':
      return { ...known, status: 'failed', code: (row.errorCode ?? 'INTERNAL') as ErrorCode };
    case 'executing':
      return { ...known, status: 'executing', attempt: row.attempts, runner: '', timeoutMs: 0 };
    case 'requested':
      return { ...known, status: 'requested' };
    case 'awaiting_approval':
    case 'approved':
      return {
        ...known,
        status: row.status,
        approval: {
          argsHash: '',
          approverRoles: [],
          deadline: '',
          requesterId: '',
          allowSelfApproval: false,
          decision: null,
        },
      };
    default: {
      const unknown: never = row.status;
      throw new Error(`unknown status ${JSON.stringify(unknown)}`);
    }
  }
}

/**
 * What an execution is taken to be when this reader never read its ToolRequested (a newer schema
 * version, say, skipped as unreadable): requested, tool unknown. Its other events are judged from
 * there rather than all refused for want of a start.
 */
const UNREAD_REQUEST: DeciderState = {
  status: 'requested',
  tool: '',
  version: null,
  attempts: 0,
  approval: null,
  cancel: null,
};

/** The prefix of the reason an event the decider refuses is skipped with (see `skipKind`). */
export const LIFECYCLE_REASON = 'life cycle: ';

/**
 * Applies one event to the execution and user rows in `state` (mutating them) and returns the
 * tool-metrics sample of a terminal event. Whether the event may follow, and the status it leads
 * to, are the decider's (contracts/execution.ts): an event `eventProblem` refuses changes nothing
 * and is reported as not applied, with the decider's reason; the row's status is the status of the
 * state `evolve` folds. The projector, the auditor and the shells share one life cycle.
 */
export function applyEvent(state: ExecutionState, event: ToolEvent, revision: number): ApplyResult {
  const m = event.metadata;
  const at = isoOf(m.occurredAt);
  const existing = state.executions.get(m.executionId);
  let before = deciderStateOf(existing);
  if (before.status === 'none' && event.type !== 'ToolRequested') before = UNREAD_REQUEST;
  const problem = eventProblem(before, event);
  if (problem !== null) return { applied: false, reason: `${LIFECYCLE_REASON}${problem}` };
  const after = evolve(before, event);
  if (after.status === 'none') throw new Error(`${event.type} left the execution unrequested`);

  const row: ExecutionRow = existing ?? {
    executionId: m.executionId,
    userId: m.userId,
    requestId: m.requestId,
    correlationId: storable(m.correlationId),
    tool: null,
    version: null,
    status: 'requested',
    attempts: 0,
    requestedAt: at,
    startedAt: null,
    finishedAt: null,
    durationMs: null,
    errorCode: null,
    errorMessage: null,
    cached: null,
    eventCount: 0,
    lastRevision: revision,
    cancelRequestedAt: null,
    state: null,
  };
  row.status = after.status;
  row.attempts = after.attempts;
  row.state = isTerminalState(after) ? null : storableState(after);
  let outcome: Outcome | null = null;
  switch (event.type) {
    case 'ToolRequested':
      row.tool = storable(event.data.tool);
      row.version = storableOrNull(event.data.version);
      break;
    case 'ToolExecuting':
      row.startedAt ??= at;
      break;
    case 'ToolCompleted':
      row.finishedAt = at;
      row.durationMs = event.data.durationMs;
      row.cached = event.data.cached;
      outcome = 'completed';
      break;
    case 'ToolFailed':
      // Refused: ended before any attempt ran (admission, denial, expiry, a cancel before the start).
      outcome = before.status === 'executing' ? 'failed' : 'refused';
      row.finishedAt = at;
      row.durationMs = event.data.durationMs;
      row.errorCode = event.data.error.code;
      row.errorMessage = storable(event.data.error.message);
      row.cached = false;
      break;
    case 'ToolCancelRequested':
      row.cancelRequestedAt = isoOf(event.data.requestedAt);
      break;
    case 'ToolApprovalRequested':
    case 'ToolApproved':
    case 'ToolDenied':
      // Only the status changes (the ToolFailed DENIED decided with a denial ends the row).
      break;
    default: {
      const unknown: never = event;
      throw new Error(`unknown event ${JSON.stringify(unknown)}`);
    }
  }
  row.eventCount += 1;
  row.lastRevision = revision;
  state.executions.set(row.executionId, row);

  const user = state.users.get(m.userId) ?? {
    userId: m.userId,
    executions: 0,
    completed: 0,
    failed: 0,
    refused: 0,
    events: 0,
    firstActivityAt: at,
    lastActivityAt: at,
  };
  user.events += 1;
  user.firstActivityAt = minIso(user.firstActivityAt, at);
  user.lastActivityAt = maxIso(user.lastActivityAt, at);
  if (event.type === 'ToolRequested') user.executions += 1;
  if (outcome) user[outcome] += 1;
  state.users.set(user.userId, user);

  if (!outcome || row.tool === null) return { applied: true, sample: null };
  return {
    applied: true,
    sample: {
      tool: metricsToolOf(row),
      minute: minuteOf(at),
      outcome,
      code: row.errorCode === null || outcome === 'completed' ? null : row.errorCode,
      durationMs: row.durationMs,
      cached: row.cached === true,
    },
  };
}

export const emptyToolMetrics = (tool: string, minute: string | null): ToolMetricsRow => ({
  tool,
  minute,
  completed: 0,
  failed: 0,
  refused: 0,
  cached: 0,
  errorCodes: {},
  latencyCount: 0,
  latencySumMs: 0,
  latencyMaxMs: null,
  latencyHistogram: emptyHistogram(),
});

/** Adds a sample to a tool-metrics row (mutating it). */
export function addSample(row: ToolMetricsRow, sample: Sample): ToolMetricsRow {
  row[sample.outcome] += 1;
  if (sample.cached) row.cached += 1;
  if (sample.code !== null)
    row.errorCodes = sortKeys({ ...row.errorCodes, [sample.code]: (row.errorCodes[sample.code] ?? 0) + 1 });
  if (sample.durationMs !== null) {
    row.latencyCount += 1;
    row.latencySumMs += sample.durationMs;
    row.latencyMaxMs =
      row.latencyMaxMs === null ? sample.durationMs : Math.max(row.latencyMaxMs, sample.durationMs);
    const hist = row.latencyHistogram.length === 0 ? emptyHistogram() : row.latencyHistogram;
    const b = bucketOf(sample.durationMs);
    hist[b] = (hist[b] ?? 0) + 1;
    row.latencyHistogram = hist;
  }
  return row;
}

/** Per-minute rows summed per tool (for a time range), sorted by tool; `minute` is null. */
export function mergeToolRows(rows: Iterable<ToolMetricsRow>): ToolMetricsRow[] {
  const byTool = new Map<string, ToolMetricsRow>();
  for (const r of rows) {
    const acc = byTool.get(r.tool) ?? emptyToolMetrics(r.tool, null);
    acc.completed += r.completed;
    acc.failed += r.failed;
    acc.refused += r.refused;
    acc.cached += r.cached;
    const codes = { ...acc.errorCodes };
    for (const [code, n] of Object.entries(r.errorCodes)) codes[code] = (codes[code] ?? 0) + n;
    acc.errorCodes = sortKeys(codes);
    acc.latencyCount += r.latencyCount;
    acc.latencySumMs += r.latencySumMs;
    acc.latencyMaxMs =
      r.latencyMaxMs === null
        ? acc.latencyMaxMs
        : Math.max(acc.latencyMaxMs ?? r.latencyMaxMs, r.latencyMaxMs);
    acc.latencyHistogram = mergeHistograms(acc.latencyHistogram, r.latencyHistogram);
    byTool.set(r.tool, acc);
  }
  return [...byTool.values()].sort((a, b) => (a.tool < b.tool ? -1 : a.tool > b.tool ? 1 : 0));
}

export const sortKeys = <T>(o: Record<string, T>): Record<string, T> =>
  Object.fromEntries(
    Object.keys(o)
      .sort()
      .map((k) => [k, o[k]!]),
  );

export const minuteKey = (tool: string, minute: string): string => `${tool}\u0000${minute}`;

/** Classifies a skip reason for the metric label (bounded cardinality). */
export function skipKind(
  reason: string,
  type: string,
): 'unknown_type' | 'newer_version' | 'invalid' | 'lifecycle' {
  if (!(EVENT_TYPES as readonly string[]).includes(type)) return 'unknown_type';
  if (/schema version \d+ is newer/.test(reason)) return 'newer_version';
  if (reason.startsWith(LIFECYCLE_REASON)) return 'lifecycle';
  return 'invalid';
}

/** All read models in memory. */
export interface ReadModels extends ExecutionState {
  toolMinutes: Map<string, ToolMetricsRow>;
  toolTotals: Map<string, ToolMetricsRow>;
  skipped: SkippedRow[];
}

/** The read models as sorted arrays: what `dumpReadModels` gives for the SQL tables. */
export interface ReadModelDump {
  executions: ExecutionRow[];
  userActivity: UserActivityRow[];
  toolMetricsByMinute: ToolMetricsRow[];
  toolMetrics: ToolMetricsRow[];
  skipped: SkippedRow[];
}

export const emptyReadModels = (): ReadModels => ({
  executions: new Map(),
  users: new Map(),
  toolMinutes: new Map(),
  toolTotals: new Map(),
  skipped: [],
});

/** What a skipped event's row records of it (its JSON aside: it may be read as text). */
/** Where an event was read from; a bare envelope replayed (`replayReadModels`) has no position or time. */
type StoredAt = Pick<RecordedEvent, 'streamId' | 'revision' | 'id' | 'type'> & {
  position: RecordedEvent['position'] | null;
  created: Date | null;
};

const skippedRow = (recorded: StoredAt, reason: string): SkippedRow => ({
  streamId: recorded.streamId,
  revision: recorded.revision,
  position: recorded.position && formatPosition(recorded.position),
  eventId: recorded.id,
  eventType: storable(recorded.type),
  reason: storable(reason),
  recordedAt: recorded.created && recorded.created.toISOString(),
});

/** One stored event in, as the runner sees it: parsed, or skipped with its reason. */
export type Incoming =
  { ok: true; event: ToolEvent; revision: number; recorded: StoredAt } | { ok: false; row: SkippedRow };

/** The row of an event that parsed but that the life cycle refused (`applyEvent`'s reason). */
export const refusedRow = (incoming: Extract<Incoming, { ok: true }>, reason: string): SkippedRow =>
  skippedRow(incoming.recorded, reason);

export function incomingFromRecorded(recorded: RecordedEvent): Incoming {
  return incomingFromParsed(recorded, parseRecorded(recorded));
}

/** The same, from the event parsed elsewhere (`parseRecorded`, on a worker thread in a rebuild). */
export function incomingFromParsed(recorded: StoredAt, parsed: Parsed): Incoming {
  if (!parsed.ok) return { ok: false, row: skippedRow(recorded, parsed.reason) };
  return {
    ok: true,
    event: parsed.event,
    revision: recorded.revision,
    recorded,
  };
}

const isRecorded = (e: RecordedEvent | ToolEvent): e is RecordedEvent => 'streamId' in e && 'position' in e;

/**
 * Replays events into fresh read models, exactly as the runner projects them. Takes stored events
 * (any order-preserving read of the user streams) or bare envelopes; for envelopes the revision is
 * the event's index in its user's stream, so pass each stream complete and in order.
 */
export function replayReadModels(events: Iterable<RecordedEvent | ToolEvent>): ReadModels {
  const model = emptyReadModels();
  const revisions = new Map<string, number>();
  for (const e of events) {
    let incoming: Incoming;
    if (isRecorded(e)) {
      incoming = incomingFromRecorded(e);
    } else {
      const stream = userStream(e.metadata.userId);
      const revision = (revisions.get(stream) ?? -1) + 1;
      revisions.set(stream, revision);
      incoming = {
        ok: true,
        event: e,
        revision,
        recorded: { streamId: stream, revision, position: null, id: e.id, type: e.type, created: null },
      };
    }
    applyIncoming(model, incoming);
  }
  return model;
}

/** Applies one incoming event to complete in-memory models. */
export function applyIncoming(model: ReadModels, incoming: Incoming): SkippedRow | null {
  if (!incoming.ok) {
    model.skipped.push(incoming.row);
    return incoming.row;
  }
  const result = applyEvent(model, incoming.event, incoming.revision);
  if (!result.applied) {
    const row = refusedRow(incoming, result.reason);
    model.skipped.push(row);
    return row;
  }
  if (result.sample) {
    const s = result.sample;
    const mk = minuteKey(s.tool, s.minute);
    model.toolMinutes.set(mk, addSample(model.toolMinutes.get(mk) ?? emptyToolMetrics(s.tool, s.minute), s));
    model.toolTotals.set(
      s.tool,
      addSample(model.toolTotals.get(s.tool) ?? emptyToolMetrics(s.tool, null), s),
    );
  }
  return null;
}

const byString =
  <T>(key: (r: T) => string) =>
  (a: T, b: T) => {
    const x = key(a);
    const y = key(b);
    return x < y ? -1 : x > y ? 1 : 0;
  };

/** Sorts rows into the dump order, and copies them so the dump does not share state with a model. */
export function toDump(model: ReadModels): ReadModelDump {
  const copy = <T>(rows: Iterable<T>): T[] => structuredClone([...rows]);
  return normalizeDump({
    executions: copy(model.executions.values()),
    userActivity: copy(model.users.values()),
    toolMetricsByMinute: copy(model.toolMinutes.values()),
    toolMetrics: copy(model.toolTotals.values()),
    skipped: copy(model.skipped),
  });
}

/** Dump order: by key; skipped events by stream and revision. Error-code keys sorted. */
export function normalizeDump(dump: ReadModelDump): ReadModelDump {
  const tools = (rows: ToolMetricsRow[]) =>
    rows
      .map((r) => ({ ...r, errorCodes: sortKeys(r.errorCodes) }))
      .sort(byString((r) => minuteKey(r.tool, r.minute ?? '')));
  return {
    executions: [...dump.executions].sort(byString((r) => r.executionId)),
    userActivity: [...dump.userActivity].sort(byString((r) => r.userId)),
    toolMetricsByMinute: tools(dump.toolMetricsByMinute),
    toolMetrics: tools(dump.toolMetrics),
    skipped: [...dump.skipped].sort((a, b) =>
      a.streamId !== b.streamId ? (a.streamId < b.streamId ? -1 : 1) : a.revision - b.revision,
    ),
  };
}

/** Human-readable differences between two dumps (empty when equal). */
export function diffDumps(actual: ReadModelDump, expected: ReadModelDump, limit = 20): string[] {
  const out: string[] = [];
  for (const key of Object.keys(expected) as Array<keyof ReadModelDump>) {
    const a = actual[key] as unknown[];
    const e = expected[key] as unknown[];
    if (a.length !== e.length) out.push(`${key}: ${a.length} rows, expected ${e.length}`);
    for (let i = 0; i < Math.max(a.length, e.length) && out.length < limit; i++) {
      const x = a[i] === undefined ? 'missing' : canonicalJson(a[i]);
      const y = e[i] === undefined ? 'missing' : canonicalJson(e[i]);
      if (x !== y) out.push(`${key}[${i}]: ${x}\n   expected ${y}`);
    }
  }
  return out.slice(0, limit);
}

/** Whether `p` (formatted) is at or before `limit`. */
export const positionAtOrBefore = (p: string, limit: string): boolean =>
  comparePositions(parsePosition(p), parsePosition(limit)) <= 0;
