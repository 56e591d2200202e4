import type pg from 'pg';
import { USER_STREAM_PREFIX } from '../../contracts/index.ts';
import {
  comparePositions,
  parsePosition,
  type EventStore,
  type RecordedEvent,
} from '../../lib/eventstore/types.ts';
import { readCheckpoint } from './checkpoint.ts';
import { LIVE_SCHEMA, PROJECTION_NAME } from './migrations.ts';
import { diffDumps, replayReadModels, toDump, type ReadModelDump } from './model.ts';
import { dumpReadModels } from './sql.ts';

/**
 * Checks for the fault suites: the SQL read models must equal a from-scratch, in-memory replay of
 * the store's user streams up to the checkpoint they were committed with.
 */

/** Every user-stream event in global order, up to and including `upTo` (formatted) when given. */
export async function readUserEvents(
  store: EventStore,
  upTo: string | null = null,
): Promise<RecordedEvent[]> {
  const limit = upTo === null ? null : parsePosition(upTo);
  const out: RecordedEvent[] = [];
  for await (const e of store.readAll()) {
    if (limit && comparePositions(e.position, limit) > 0) break;
    if (e.streamId.startsWith(USER_STREAM_PREFIX)) out.push(e);
  }
  return out;
}

/** The dump a replay of the store gives, up to `upTo` (all events when omitted). */
export async function replayToDump(
  store: EventStore,
  options: { upTo?: string | null } = {},
): Promise<ReadModelDump> {
  return toDump(replayReadModels(await readUserEvents(store, options.upTo ?? null)));
}

export interface ReplayComparison {
  equal: boolean;
  /** The checkpoint the models were read at. */
  position: string | null;
  /** Events the checkpoint says were applied, and events the replay read up to that position. */
  checkpointEvents: number;
  replayedEvents: number;
  differences: string[];
  actual: ReadModelDump;
  expected: ReadModelDump;
}

/**
 * Reads the read models and their checkpoint in one snapshot (valid while a projector runs), then
 * replays the store up to that checkpoint and compares.
 */
export async function compareWithReplay(
  pool: pg.Pool,
  store: EventStore,
  options: { projection?: string; schema?: string } = {},
): Promise<ReplayComparison> {
  const client = await pool.connect();
  let actual: ReadModelDump;
  let position: string | null;
  let checkpointEvents: number;
  try {
    await client.query('begin isolation level repeatable read read only');
    const checkpoint = await readCheckpoint(client, options.projection ?? PROJECTION_NAME);
    position = checkpoint.position;
    checkpointEvents = checkpoint.events;
    actual = await dumpReadModels(client, options.schema ?? LIVE_SCHEMA);
    await client.query('commit');
  } finally {
    client.release();
  }
  const events = position === null ? [] : await readUserEvents(store, position);
  const expected = toDump(replayReadModels(events));
  const differences = diffDumps(actual, expected);
  if (events.length !== checkpointEvents) {
    differences.unshift(
      `checkpoint counts ${checkpointEvents} events, the store has ${events.length} up to ${position}`,
    );
  }
  return {
    equal: differences.length === 0,
    position,
    checkpointEvents,
    replayedEvents: events.length,
    differences,
    actual,
    expected,
  };
}
