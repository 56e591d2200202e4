import { ToolEvent, userIdOfStream, type JsonValue } from '../contracts/index.ts';
import { InvalidEventError, type EventData, type Json, type RecordedEvent } from './eventstore/types.ts';

/**
 * How a `ToolEvent` envelope sits in the event store: type and data as they are, the envelope's
 * schema version inside the stored metadata, the execution id as the event's key. Parsing on the way in means an event whose data fails
 * its schema is refused before anything is written.
 */
export function toEventData(event: ToolEvent): EventData {
  const parsed = ToolEvent.safeParse(event);
  if (!parsed.success) {
    throw new InvalidEventError(
      `${String(event.type)} ${String(event.id)} fails its schema: ${parsed.error.message}`,
    );
  }
  const e = parsed.data;
  return {
    id: e.id,
    type: e.type,
    data: e.data as Json,
    metadata: { schemaVersion: e.schemaVersion, ...e.metadata },
    // The store indexes an event by its execution: `readByKey` finds one execution in O(its events).
    key: e.metadata.executionId,
  };
}

export type ParsedRecorded =
  | { ok: true; event: ToolEvent; userId: string; revision: number; recorded: RecordedEvent }
  | { ok: false; reason: string; recorded: RecordedEvent };

/** A stored event back to its envelope, or why it cannot be (unknown type, newer schema, bad shape). */
export function fromRecorded(recorded: RecordedEvent): ParsedRecorded {
  const meta = (recorded.metadata ?? {}) as { [key: string]: JsonValue };
  const { schemaVersion, ...metadata } = meta;
  const userId = userIdOfStream(recorded.streamId);
  if (!userId) return { ok: false, reason: `stream ${recorded.streamId} is not a user stream`, recorded };
  const parsed = ToolEvent.safeParse({
    id: recorded.id,
    type: recorded.type,
    schemaVersion,
    data: recorded.data,
    metadata,
  });
  if (!parsed.success) {
    const reason =
      typeof schemaVersion === 'number' && schemaVersion > 1
        ? `schema version ${schemaVersion} is newer than this reader knows`
        : `does not match its schema: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`;
    return { ok: false, reason: `${recorded.type} ${recorded.id}: ${reason}`, recorded };
  }
  if (parsed.data.metadata.userId !== userId) {
    return {
      ok: false,
      reason: `event ${recorded.id} names user ${parsed.data.metadata.userId} in ${recorded.streamId}`,
      recorded,
    };
  }
  return { ok: true, event: parsed.data, userId, revision: recorded.revision, recorded };
}
