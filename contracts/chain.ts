import { hash } from 'node:crypto';
import { GENESIS_HASH, type ToolEvent, type ToolEventBody } from './events.ts';
import { eventIdFor, executionIdFor, type ExecutionStep } from './ids.ts';

/**
 * Short object keys seen so far, quoted and followed by their colon: events repeat the same few
 * dozen keys, and looking one up costs less than quoting it again. Bounded in count and in key
 * length, since arguments (hashed before any schema checks them) bring keys of their own, of any
 * size; past the bounds a key is quoted each time.
 */
const quotedKeys = new Map<string, string>();
const QUOTED_KEYS_MAX = 4096;
const QUOTED_KEY_MAX_LENGTH = 64;

function quotedKey(key: string): string {
  let quoted = quotedKeys.get(key);
  if (quoted === undefined) {
    quoted = `${JSON.stringify(key)}:`;
    if (key.length <= QUOTED_KEY_MAX_LENGTH && quotedKeys.size < QUOTED_KEYS_MAX) quotedKeys.set(key, quoted);
  }
  return quoted;
}

/** The keys in UTF-16 code unit order; an insertion sort for the few keys of an event's objects. */
function sortedKeys(record: object): string[] {
  const keys = Object.keys(record);
  if (keys.length > 16) return keys.sort();
  for (let i = 1; i < keys.length; i++) {
    const key = keys[i]!;
    let j = i - 1;
    for (; j >= 0 && keys[j]! > key; j--) keys[j + 1] = keys[j]!;
    keys[j + 1] = key;
  }
  return keys;
}

/**
 * Canonical JSON (RFC 8785 style): object keys sorted by UTF-16 code units, no whitespace,
 * numbers and strings as JSON.stringify writes them. The same value always gives the same bytes,
 * whatever key order a database hands back.
 */
export function canonicalJson(value: unknown): string {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError('non-finite number');
      return JSON.stringify(value);
    case 'object': {
      if (value === null) return 'null';
      // Loops and string concatenation rather than map/filter/join: this runs for every field of
      // every event hashed (each append, each verification).
      if (Array.isArray(value)) {
        let out = '[';
        for (let i = 0; i < value.length; i++) out += (i === 0 ? '' : ',') + canonicalJson(value[i]);
        return `${out}]`;
      }
      const record = value as Record<string, unknown>;
      const keys = sortedKeys(record);
      let out = '{';
      for (let i = 0; i < keys.length; i++) {
        const key = keys[i]!;
        const v = record[key];
        if (v === undefined) continue;
        out += (out.length === 1 ? '' : ',') + quotedKey(key) + canonicalJson(v);
      }
      return `${out}}`;
    }
    default:
      throw new TypeError(`cannot encode ${typeof value}`);
  }
}

type Unhashed<E extends ToolEvent> = Omit<E, 'metadata'> & { metadata: Omit<E['metadata'], 'hash'> };

/** SHA-256 over the canonical encoding of the whole event except its own hash (prevHash included). */
export function eventHash(event: Unhashed<ToolEvent> | ToolEvent): string {
  const { hash: _hash, ...metadata } = event.metadata as ToolEvent['metadata'];
  const content = {
    id: event.id,
    type: event.type,
    schemaVersion: event.schemaVersion,
    data: event.data,
    metadata,
  };
  return hash('sha256', canonicalJson(content), 'hex');
}

/** Adds `hash` to each event, linking each to the one before (`prevHash` of the first is given). */
export function chainEvents<E extends ToolEvent>(
  events: Array<Unhashed<E>>,
  prevHash: string = GENESIS_HASH,
): E[] {
  const out: E[] = [];
  let prev = prevHash;
  for (const e of events) {
    const linked = { ...e, metadata: { ...e.metadata, prevHash: prev } } as Unhashed<E>;
    const hash = eventHash(linked);
    out.push({ ...linked, metadata: { ...linked.metadata, hash } } as unknown as E);
    prev = hash;
  }
  return out;
}

export type ChainBreak = { index: number; eventId: string; problem: string };

/** Checks each event's hash and link; returns the first break, or null. */
export function verifyChain(events: Iterable<ToolEvent>, prevHash: string = GENESIS_HASH): ChainBreak | null {
  let prev = prevHash;
  let index = 0;
  for (const e of events) {
    if (e.metadata.prevHash !== prev) {
      return {
        index,
        eventId: e.id,
        problem: `prevHash ${e.metadata.prevHash} does not match previous hash ${prev}`,
      };
    }
    const actual = eventHash(e);
    if (actual !== e.metadata.hash) {
      return {
        index,
        eventId: e.id,
        problem: `hash ${e.metadata.hash} does not cover the content (expected ${actual})`,
      };
    }
    prev = e.metadata.hash;
    index++;
  }
  return null;
}

/** The step an event body is in its execution's life, which names the event's deterministic id. */
export function stepOf(body: ToolEventBody): ExecutionStep {
  switch (body.type) {
    case 'ToolRequested':
      return 'requested';
    case 'ToolExecuting':
      return `executing:${body.data.attempt}`;
    case 'ToolCompleted':
    case 'ToolFailed':
      return 'terminal';
    case 'ToolCancelRequested':
      return 'cancel-requested';
    case 'ToolApprovalRequested':
      return 'approval-requested';
    case 'ToolApproved':
    case 'ToolDenied':
      return 'approval-decided';
    default: {
      const unknown: never = body;
      throw new Error(`unknown event ${JSON.stringify(unknown)}`);
    }
  }
}

/** Whose execution a run of events belongs to, what caused the first of them, and when each occurred. */
export interface EnvelopeContext {
  userId: string;
  executionId: string;
  requestId: string;
  correlationId: string;
  /** The cause of the first event: the request id for a ToolRequested, else the event before it. */
  causationId: string | null;
  /** When the event at this index occurred (ISO 8601). */
  occurredAt: (index: number) => string;
}

/**
 * The context of an execution's events from its request on, as the dispatcher writes a new one:
 * its execution id from (user, request id), correlated by that id, the request the first cause.
 */
export function requestContext(
  userId: string,
  requestId: string,
  occurredAt: (index: number) => string,
): EnvelopeContext {
  const executionId = executionIdFor(userId, requestId);
  return { userId, executionId, requestId, correlationId: executionId, causationId: requestId, occurredAt };
}

/**
 * An execution's event bodies in their envelopes, as they are stored: deterministic ids (so a
 * retried step never writes twice), each caused by the one before, chained after `prevHash`.
 */
export function envelopeEvents(
  bodies: readonly ToolEventBody[],
  c: EnvelopeContext,
  prevHash: string = GENESIS_HASH,
): ToolEvent[] {
  let causationId = c.causationId;
  const unhashed = bodies.map((body, i) => {
    const id = eventIdFor(c.executionId, stepOf(body));
    const event = {
      id,
      type: body.type,
      schemaVersion: 1 as const,
      data: body.data,
      metadata: {
        userId: c.userId,
        executionId: c.executionId,
        requestId: c.requestId,
        correlationId: c.correlationId,
        causationId,
        occurredAt: c.occurredAt(i),
        prevHash: GENESIS_HASH,
      },
    };
    causationId = id;
    return event;
  });
  return chainEvents(unhashed as Array<Unhashed<ToolEvent>>, prevHash);
}
