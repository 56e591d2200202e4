import { availableParallelism } from 'node:os';
import { z } from 'zod';
import {
  eventHash,
  lifecycleBody,
  type EventMetadata,
  type LifecycleBody,
  type ToolEvent,
} from '../../contracts/index.ts';
import { intVar, loadConfig } from '../config.ts';
import type { Json, RecordedEvent, RecordedEventText } from '../eventstore/types.ts';
import { fromRecorded } from '../toolEvents.ts';
import { ThreadPool } from './pool.ts';

/**
 * The CPU work of the long reads, parsing a stored event against its schema (and, for the audit,
 * hashing its canonical JSON), done either here or in worker threads (lib/threads/pool.ts). Both
 * ways run the same functions below, so they give the same answers; the threads only change where.
 */

/** What a worker needs of a stored event (a position or a Date would only cost copying). */
export type WireEvent = Pick<RecordedEvent, 'id' | 'type' | 'data' | 'metadata' | 'streamId' | 'revision'>;

/** The same, its JSON still text (EventStore `readStreamText`): a string costs little to copy to a thread. */
export type WireText = Pick<RecordedEventText, 'id' | 'type' | 'data' | 'metadata' | 'streamId' | 'revision'>;

/** A stored event parsed: the envelope, or why it is not one (lib/toolEvents `fromRecorded`). */
export type Parsed = { ok: true; event: ToolEvent; userId: string } | { ok: false; reason: string };

/** Parsed, and for a parsed event the hash of its content (contracts/chain `eventHash`). */
export type Checked =
  { ok: true; event: ToolEvent; userId: string; hash: string } | { ok: false; reason: string };

/**
 * What the audit's checks read of an event (services/auditor/verify.ts `ChainVerifier`): its id,
 * its links in the chain, and what the life-cycle rules read. A worker thread sends back only
 * this: copying whole events (arguments, results, every envelope field) back to the reading thread
 * cost it more than the rest of its work.
 */
export type AuditedEvent = LifecycleBody & {
  id: string;
  metadata: Pick<EventMetadata, 'executionId' | 'requestId' | 'prevHash' | 'hash'>;
};

/** A Checked event cut down to what the audit reads (a whole Checked is one too). */
export type Audited =
  { ok: true; event: AuditedEvent; userId: string; hash: string } | { ok: false; reason: string };

/**
 * What the audit reads of a checked event, as one object: the definition that `auditedColumns` and
 * `fromAuditedColumns` reproduce field by field (lib/threads/pool.unit.spec.ts holds them to it).
 */
export function audited(checked: Checked): Audited {
  if (!checked.ok) return checked;
  const { id, metadata } = checked.event;
  const { executionId, requestId, prevHash, hash } = metadata;
  return {
    ok: true,
    userId: checked.userId,
    hash: checked.hash,
    event: { ...lifecycleBody(checked.event), id, metadata: { executionId, requestId, prevHash, hash } },
  };
}

export function parseRecorded(recorded: WireEvent): Parsed {
  // fromRecorded reads only these fields; the rest of a RecordedEvent is not needed to judge it.
  const parsed = fromRecorded(recorded as RecordedEvent);
  return parsed.ok
    ? { ok: true, event: parsed.event, userId: parsed.userId }
    : { ok: false, reason: parsed.reason };
}

export function checkRecorded(recorded: WireEvent): Checked {
  const parsed = parseRecorded(recorded);
  return parsed.ok
    ? { ok: true, event: parsed.event, userId: parsed.userId, hash: eventHash(parsed.event) }
    : parsed;
}

/** An event read as text with its JSON parsed, or why it does not parse. */
function fromText(recorded: WireText): WireEvent | { ok: false; reason: string } {
  let data: unknown;
  let metadata: unknown;
  try {
    data = JSON.parse(recorded.data);
    metadata = JSON.parse(recorded.metadata);
  } catch (e) {
    // The store keeps JSON columns; text that is not JSON is a damaged row, judged like any other.
    return {
      ok: false,
      reason: `${recorded.type} ${recorded.id}: its stored JSON does not parse (${(e as Error).message})`,
    };
  }
  const { id, type, streamId, revision } = recorded;
  return { id, type, streamId, revision, data: data as Json, metadata: metadata as Json };
}

/** `parseRecorded` of an event read as text: its JSON parsed first (here, or on a worker thread). */
export function parseText(recorded: WireText): Parsed {
  const event = fromText(recorded);
  return 'ok' in event ? event : parseRecorded(event);
}

/** `checkRecorded` of an event read as text. */
export function checkText(recorded: WireText): Checked {
  const event = fromText(recorded);
  return 'ok' in event ? event : checkRecorded(event);
}

/**
 * A page of events on its way to or from a thread, one array per field. The structured clone
 * copies an array of strings for a fraction of what it costs for as many objects (about a third,
 * each way), and the reading thread, which bounds a long read, pays for the copy both ways.
 */
export type Columns<E> = { [K in keyof E]-?: Array<E[K]> };

const WIRE_KEYS = ['id', 'type', 'data', 'metadata', 'streamId', 'revision'] as const;

function toColumns<E extends WireEvent | WireText>(events: readonly E[]): Columns<E> {
  const page = {} as Record<(typeof WIRE_KEYS)[number], unknown[]>;
  for (const key of WIRE_KEYS) page[key] = events.map((e) => e[key]);
  return page as Columns<E>;
}

/** The events of a page, as objects again. */
function fromColumns<E extends WireEvent | WireText>(page: Columns<E>): E[] {
  const events = new Array<E>(page.id.length);
  for (let i = 0; i < events.length; i++) {
    events[i] = {
      id: page.id[i],
      type: page.type[i],
      data: page.data[i],
      metadata: page.metadata[i],
      streamId: page.streamId[i],
      revision: page.revision[i],
    } as E;
  }
  return events;
}

/** A page of Audited results by field; `reason` is null where the event parsed ('' fills the rest). */
export interface AuditedColumns {
  reason: Array<string | null>;
  userId: string[];
  hash: string[];
  id: string[];
  type: Array<AuditedEvent['type']>;
  data: unknown[];
  executionId: string[];
  requestId: string[];
  prevHash: string[];
  storedHash: string[];
}

/** The audit's columns of checked events (`audited` of each, without an object per event). */
export function auditedColumns(results: readonly Checked[]): AuditedColumns {
  const c: AuditedColumns = {
    reason: [],
    userId: [],
    hash: [],
    id: [],
    type: [],
    data: [],
    executionId: [],
    requestId: [],
    prevHash: [],
    storedHash: [],
  };
  for (const r of results) {
    if (r.ok) {
      const { event } = r;
      c.reason.push(null);
      c.userId.push(r.userId);
      c.hash.push(r.hash);
      c.id.push(event.id);
      c.type.push(event.type);
      c.data.push(lifecycleBody(event).data);
      c.executionId.push(event.metadata.executionId);
      c.requestId.push(event.metadata.requestId);
      c.prevHash.push(event.metadata.prevHash);
      c.storedHash.push(event.metadata.hash);
    } else {
      c.reason.push(r.reason);
      c.userId.push('');
      c.hash.push('');
      c.id.push('');
      c.type.push('ToolRequested');
      c.data.push(null);
      c.executionId.push('');
      c.requestId.push('');
      c.prevHash.push('');
      c.storedHash.push('');
    }
  }
  return c;
}

/** The Audited results of a page sent back by a thread (`audited` of each `Checked`). */
export function fromAuditedColumns(c: AuditedColumns): Audited[] {
  const results = new Array<Audited>(c.reason.length);
  for (let i = 0; i < results.length; i++) {
    const reason = c.reason[i];
    if (reason != null) {
      results[i] = { ok: false, reason };
      continue;
    }
    const metadata = {
      executionId: c.executionId[i]!,
      requestId: c.requestId[i]!,
      prevHash: c.prevHash[i]!,
      hash: c.storedHash[i]!,
    };
    // Type and data were taken together from one LifecycleBody.
    const event = { type: c.type[i], data: c.data[i], id: c.id[i]!, metadata } as AuditedEvent;
    results[i] = { ok: true, userId: c.userId[i]!, hash: c.hash[i]!, event };
  }
  return results;
}

/**
 * A page of Parsed results by field. The envelope's fields are arrays of strings; the metadata
 * one array per key (a hole where an event lacks it); only `data` stays an object per event.
 */
export interface ParsedColumns {
  reason: Array<string | null>;
  userId: string[];
  id: string[];
  type: Array<ToolEvent['type']>;
  schemaVersion: number[];
  data: unknown[];
  metadata: Record<string, unknown[]>;
}

export function parsedColumns(results: readonly Parsed[]): ParsedColumns {
  const c: ParsedColumns = {
    reason: [],
    userId: [],
    id: [],
    type: [],
    schemaVersion: [],
    data: [],
    // No prototype: a key is only ever one the events' metadata carries.
    metadata: Object.create(null) as Record<string, unknown[]>,
  };
  for (let i = 0; i < results.length; i++) {
    const r = results[i]!;
    if (!r.ok) {
      c.reason.push(r.reason);
      c.userId.push('');
      c.id.push('');
      c.type.push('ToolRequested');
      c.schemaVersion.push(0);
      c.data.push(null);
      continue;
    }
    const { event } = r;
    c.reason.push(null);
    c.userId.push(r.userId);
    c.id.push(event.id);
    c.type.push(event.type);
    c.schemaVersion.push(event.schemaVersion);
    c.data.push(event.data);
    const metadata = event.metadata as Record<string, unknown>;
    for (const key in metadata) {
      const value = metadata[key];
      if (value === undefined) continue;
      (c.metadata[key] ??= new Array<unknown>(results.length).fill(undefined))[i] = value;
    }
  }
  return c;
}

/** The Parsed results of a page sent back by a thread, the envelopes whole again. */
export function fromParsedColumns(c: ParsedColumns): Parsed[] {
  const keys = Object.keys(c.metadata);
  const columns = keys.map((key) => c.metadata[key]!);
  const results = new Array<Parsed>(c.reason.length);
  for (let i = 0; i < results.length; i++) {
    const reason = c.reason[i];
    if (reason != null) {
      results[i] = { ok: false, reason };
      continue;
    }
    const metadata: Record<string, unknown> = {};
    for (let k = 0; k < keys.length; k++) {
      const value = columns[k]![i];
      if (value !== undefined) metadata[keys[k]!] = value;
    }
    // The fields were taken from one parsed envelope, and are put back together as they were.
    const event = {
      id: c.id[i],
      type: c.type[i],
      schemaVersion: c.schemaVersion[i],
      data: c.data[i],
      metadata,
    } as ToolEvent;
    results[i] = { ok: true, event, userId: c.userId[i]! };
  }
  return results;
}

export type EventTask =
  | { kind: 'parse'; events: Columns<WireEvent> }
  | { kind: 'parse-text'; events: Columns<WireText> }
  | { kind: 'audit'; events: Columns<WireEvent> }
  | { kind: 'audit-text'; events: Columns<WireText> };

/** A worker's answer to one task: the events' results, in the order given. */
export function handleEventTask(task: EventTask): ParsedColumns | AuditedColumns {
  switch (task.kind) {
    case 'parse':
      return parsedColumns(fromColumns(task.events).map(parseRecorded));
    case 'parse-text':
      return parsedColumns(fromColumns(task.events).map(parseText));
    case 'audit':
      return auditedColumns(fromColumns(task.events).map(checkRecorded));
    case 'audit-text':
      return auditedColumns(fromColumns(task.events).map(checkText));
  }
}

/** Parses and hashes pages of stored events on worker threads. */
export class EventThreads {
  private readonly pool: ThreadPool<EventTask, ParsedColumns | AuditedColumns>;

  constructor(readonly size: number) {
    this.pool = new ThreadPool(new URL('./eventTask.ts', import.meta.url), size);
  }

  /** Tasks sent to the threads so far (pages, batches). */
  tasks = 0;

  parse(events: readonly RecordedEvent[]): Promise<Parsed[]> {
    this.tasks++;
    // The pool answers each task with its kind's results: a parse task's are Parsed.
    const page = this.pool.run({ kind: 'parse', events: toColumns(events) }) as Promise<ParsedColumns>;
    return page.then(fromParsedColumns);
  }

  parseText(events: readonly RecordedEventText[]): Promise<Parsed[]> {
    this.tasks++;
    const page = this.pool.run({ kind: 'parse-text', events: toColumns(events) }) as Promise<ParsedColumns>;
    return page.then(fromParsedColumns);
  }

  /** Parses and hashes events for the audit, and sends back what it reads of them (`Audited`). */
  audit(events: readonly RecordedEvent[]): Promise<Audited[]> {
    this.tasks++;
    const page = this.pool.run({ kind: 'audit', events: toColumns(events) }) as Promise<AuditedColumns>;
    return page.then(fromAuditedColumns);
  }

  auditText(events: readonly RecordedEventText[]): Promise<Audited[]> {
    this.tasks++;
    const page = this.pool.run({ kind: 'audit-text', events: toColumns(events) }) as Promise<AuditedColumns>;
    return page.then(fromAuditedColumns);
  }

  /** True once every thread has started. */
  get isWarm(): boolean {
    return this.pool.isWarm;
  }

  /** Resolves once every thread has started (see ThreadPool.warm). */
  warm(): Promise<void> {
    return this.pool.warm();
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

/**
 * As many threads as cores, at most four. The calling thread mostly waits (on the store, and on the
 * threads: a third of its time idle in a 1-thread profile), so it does not need a core of its own;
 * one thread on two cores measured slower than none (the copying to and from it is extra work and
 * it alone bounds the rate), two faster. Past four the calling thread, not the parsing, bounds a read.
 */
export function defaultEventThreads(): number {
  return Math.min(4, Math.max(1, availableParallelism()));
}

/**
 * Below this many events a job parses in the calling thread: starting the threads (tsx and the
 * schemas loaded in each, about a second of CPU on a busy machine) would cost more than they save.
 */
export const THREADED_FROM_EVENTS = 10_000;

export const ThreadsEnv = z.object({
  /**
   * Worker threads that parse, validate and hash stored events in the long reads (audit
   * verification, read-model rebuild); 0 does that work in the calling thread.
   */
  EVENT_THREADS: intVar(defaultEventThreads(), 0, 64),
});

let shared: EventThreads | null | undefined;

/** The process's pool, sized by EVENT_THREADS; null when it is 0. Started on first use, never closed. */
export function sharedEventThreads(
  env: Record<string, string | undefined> = process.env,
): EventThreads | null {
  if (shared === undefined) {
    const size = loadConfig(ThreadsEnv, env).EVENT_THREADS;
    shared = size > 0 ? new EventThreads(size) : null;
  }
  return shared;
}
