import { executionIdFor, isUserId, REQUEST_HEADERS, REQUEST_ID_PATTERN } from '../../contracts/index.ts';

/** One delivery of a request from the intake, whatever carried it. */
export interface Delivery {
  subject: string;
  data: Uint8Array;
  header(name: string): string | undefined;
  /** Unique per delivery (stream sequence and delivery count): names a concurrency slot. */
  id: string;
  redelivered: boolean;
  /** When the request was stored by JetStream (epoch ms): the rate limit judges it by this time. */
  sentAt?: number;
  /**
   * Requests standing behind this one as it starts: not yet delivered by JetStream (as the
   * intake's last pull said) and waiting in this instance's fair queue.
   */
  behind?: number;
  /** Set by the intake when the request was cancelled while it waited: it is recorded cancelled, not run. */
  cancel?: CancelOrder;
}

/** Who asked for a cancel and through what; recorded as `ToolCancelRequested`. */
export interface CancelOrder {
  /** The user id of the token that asked (the execution's user, or an admin). */
  by: string;
  via: 'nats' | 'http';
  /** Whether who asked is an admin acting for the execution's user. */
  admin?: boolean;
  /** Why, as who asked said it (else "asked through <via>"). */
  reason?: string;
}

/**
 * What the intake does with the message: ack it (and, with `afterAck`, wait for JetStream to
 * confirm the ack, then call it with whether it did: an answer that must not go out for a message
 * that could still come back), or let it come back later.
 */
export type Disposition =
  { ack: true; afterAck?: (confirmed: boolean) => void } | { ack: false; retryInMs: number };

/**
 * The execution a delivery would be, for the user of its subject: its body's request id, or the
 * one in `Nats-Msg-Id`. Null when neither names a request. Used to find a waiting request to cancel.
 */
export function executionIdOfDelivery(d: Delivery, userId: string): string | null {
  let requestId: unknown;
  try {
    requestId = (JSON.parse(Buffer.from(d.data).toString('utf8')) as { requestId?: unknown } | null)
      ?.requestId;
  } catch {
    // not JSON: the message id may still name it
    requestId = undefined;
  }
  if (typeof requestId !== 'string' || !REQUEST_ID_PATTERN.test(requestId)) {
    requestId = requestIdFromMsgId(d.header(REQUEST_HEADERS.msgId), userId);
  }
  return typeof requestId === 'string' && isUserId(userId) ? executionIdFor(userId, requestId) : null;
}

/**
 * `<userId>:<requestId>/<fingerprint>` (`requestMsgId`; an older client sends no `/<fingerprint>`)
 * -> requestId, when the prefix is the token's user and the rest a request id.
 */
export function requestIdFromMsgId(msgId: string | undefined, userId: string): string | undefined {
  if (!msgId || !isUserId(userId) || !msgId.startsWith(`${userId}:`)) return undefined;
  const slash = msgId.indexOf('/');
  const rest = msgId.slice(userId.length + 1, slash === -1 ? undefined : slash);
  return REQUEST_ID_PATTERN.test(rest) ? rest : undefined;
}

/** An error as it may be logged: name, message and code, never a request or its token. */
export function errorInfo(e: unknown): { name: string; message: string; code?: unknown } {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return { name: e.name, message: e.message, ...(code !== undefined ? { code } : {}) };
  }
  return { name: 'Error', message: String(e) };
}
