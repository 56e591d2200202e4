import { notificationName, userStream, type Notification } from '../../contracts/index.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { fromRecorded } from '../../lib/toolEvents.ts';

/** One user event ready to send: its revision and the JSON text of its notification. */
export interface Delivery {
  userId: string;
  revision: number;
  text: string;
}

export type StoredItem = Delivery | { userId: string; revision: number; unreadable: string };

/**
 * The events of a user's stream from `fromRevision` (inclusive) up to `toRevision` (inclusive, or
 * the end), as the notifications the dispatcher publishes. An event that does not parse is
 * reported as unreadable rather than skipped silently.
 */
export async function* readNotifications(
  store: EventStore,
  userId: string,
  fromRevision: number,
  toRevision = Number.POSITIVE_INFINITY,
): AsyncGenerator<StoredItem> {
  if (toRevision < fromRevision) return;
  const maxCount = Number.isFinite(toRevision) ? toRevision - fromRevision + 1 : undefined;
  for await (const recorded of store.readStream(userStream(userId), { fromRevision, maxCount })) {
    if (recorded.revision > toRevision) return;
    const parsed = fromRecorded(recorded);
    if (!parsed.ok) {
      yield { userId, revision: recorded.revision, unreadable: parsed.reason };
      continue;
    }
    yield {
      userId,
      revision: parsed.revision,
      text: JSON.stringify(eventNotification(parsed.userId, parsed.revision, parsed.event)),
    };
  }
}

export function eventNotification(
  userId: string,
  revision: number,
  event: Extract<Notification, { kind: 'event' }>['event'],
): Notification {
  return { kind: 'event', name: notificationName(event.type), userId, revision, event };
}
