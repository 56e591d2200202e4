import { notificationName, userStream, type Notification, type ToolEvent } from '../../contracts/index.ts';
import type { EventStore, RecordedEvent } from '../../lib/eventstore/types.ts';
import { fromRecorded } from '../../lib/toolEvents.ts';

/** One stored user event ready to send: its revision, the event, and the JSON text of its notification. */
export interface Delivery {
  userId: string;
  revision: number;
  event: ToolEvent;
  text: string;
}

/** A stored event, or the revision of one this notifier cannot parse (a newer schema), and why. */
export type StoredItem = Delivery | { userId: string; revision: number; unreadable: string };

/**
 * The events of a user's stream from `fromRevision` (inclusive) up to `toRevision` (inclusive, or
 * the end), at most `limit` of them, as the notifications the dispatcher publishes. An event that
 * does not parse is reported as unreadable rather than skipped silently.
 */
export async function* readNotifications(
  store: EventStore,
  userId: string,
  fromRevision: number,
  toRevision = Number.POSITIVE_INFINITY,
  limit = Number.POSITIVE_INFINITY,
): AsyncGenerator<StoredItem> {
  if (toRevision < fromRevision) return;
  const count = Math.min(toRevision - fromRevision + 1, limit);
  const maxCount = Number.isFinite(count) ? count : undefined;
  for await (const recorded of store.readStream(userStream(userId), { fromRevision, maxCount })) {
    if (recorded.revision > toRevision) return;
    yield storedItem(userId, recorded);
  }
}

/** The last `count` events of a user's stream, oldest first. */
export async function readLast(store: EventStore, userId: string, count: number): Promise<StoredItem[]> {
  const items: StoredItem[] = [];
  for await (const recorded of store.readStream(userStream(userId), {
    direction: 'backwards',
    maxCount: count,
  })) {
    items.push(storedItem(userId, recorded));
  }
  return items.reverse();
}

function storedItem(userId: string, recorded: RecordedEvent): StoredItem {
  const parsed = fromRecorded(recorded);
  if (!parsed.ok) return { userId, revision: recorded.revision, unreadable: parsed.reason };
  return {
    userId,
    revision: parsed.revision,
    event: parsed.event,
    text: JSON.stringify(eventNotification(parsed.userId, parsed.revision, parsed.event)),
  };
}

export function eventNotification(
  userId: string,
  revision: number,
  event: Extract<Notification, { kind: 'event' }>['event'],
): Notification {
  return { kind: 'event', name: notificationName(event.type), userId, revision, event };
}
