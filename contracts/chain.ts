import { createHash } from 'node:crypto';
import { GENESIS_HASH, type ToolEvent } from './events.ts';

/**
 * Canonical JSON (RFC 8785 style): object keys sorted by UTF-16 code units, no whitespace,
 * numbers and strings as JSON.stringify writes them. The same value always gives the same bytes,
 * whatever key order a database hands back.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'number' && !Number.isFinite(value)) throw new TypeError('non-finite number');
    const s = JSON.stringify(value);
    if (s === undefined) throw new TypeError(`cannot encode ${typeof value}`);
    return s;
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.keys(value)
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`);
  return `{${entries.join(',')}}`;
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
  return createHash('sha256').update(canonicalJson(content)).digest('hex');
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
