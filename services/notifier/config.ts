import { z } from 'zod';
import { CommonEnv, requireTokenKey, UserTokenEnv } from '../../lib/config.ts';

const positiveInt = (fallback: number) => z.coerce.number().int().positive().default(fallback);

/** One origin as a browser sends it: scheme, host and port, no path, no trailing slash. */
const OriginList = z
  .string()
  .transform((s) =>
    s
      .split(',')
      .map((o) => o.trim())
      .filter((o) => o.length > 0),
  )
  .pipe(
    z.array(
      z
        .string()
        .regex(
          /^https?:\/\/[^/\s?#]+\/?$/,
          'each origin must look like http(s)://host[:port], without a path',
        )
        .transform(normalizeOrigin),
    ),
  );

/** The notifier's environment: the common variables, the user-token ones and its own (see docs/notifier.md). */
const NotifierVariables = CommonEnv.extend({
  ...UserTokenEnv.shape,
  /** Comma list of origins allowed to open /ws and POST /tickets. Default: the notifier's own. */
  NOTIFIER_ALLOWED_ORIGINS: OriginList.optional(),
  /** Unsent bytes per socket: events wait while a socket holds more than half of this. */
  NOTIFIER_MAX_BUFFER_BYTES: positiveInt(1024 * 1024),
  /** Largest frame a client may send (the server answers close code 1009 above it). */
  NOTIFIER_MAX_FRAME_BYTES: positiveInt(16 * 1024),
  /** How long a ticket from POST /tickets may wait before it is used. */
  NOTIFIER_TICKET_TTL_SECONDS: positiveInt(30),
  /** Tickets one user may get per minute (a window counted in Redis, shared by every instance); 429 above. */
  NOTIFIER_TICKETS_PER_MINUTE: positiveInt(60),
  /** Sockets that have not authenticated yet (no ticket, no auth message so far), in all and per remote address. */
  NOTIFIER_MAX_UNAUTHENTICATED: positiveInt(1_000),
  NOTIFIER_MAX_UNAUTHENTICATED_PER_ADDRESS: positiveInt(100),
  /** Authenticated sockets one user may hold open on this notifier; beyond it a socket is closed with 1013. */
  NOTIFIER_MAX_SOCKETS_PER_USER: positiveInt(32),
  /**
   * Store reads that sockets make for themselves (replays, gap fills; one page each) in flight at
   * once, in all and per user; the others wait their turn. Keep the total below the event store's
   * pool (10 connections) so that the feeds and the health check always find a connection.
   */
  NOTIFIER_MAX_CATCHUP_READS: positiveInt(4),
  NOTIFIER_MAX_CATCHUP_READS_PER_USER: positiveInt(1),
  /** A socket without a ticket must send `{type:'auth'}` within this time. */
  NOTIFIER_AUTH_TIMEOUT_MS: positiveInt(5_000),
  /** Protocol pings; a socket that misses one pong is terminated at the next round. */
  NOTIFIER_PING_INTERVAL_MS: positiveInt(30_000),
  /** Sustained client messages per second per socket, and the burst allowed above it. */
  NOTIFIER_MAX_MESSAGES_PER_SECOND: positiveInt(5),
  NOTIFIER_MESSAGE_BURST: positiveInt(20),
  /**
   * How often each watched user's stream is read for events whose NATS publish never came; 0 (the
   * default) never: the dispatchers' event relay publishes every committed event
   * (docs/decisions/0017-event-relay.md). Set it when the dispatchers run DISPATCHER_EVENT_PUBLISH=commit.
   */
  NOTIFIER_TAIL_CHECK_MS: z.coerce.number().int().min(0).default(0),
  /** How long an event waits for its socket to drain before the socket is cut off (4408). */
  NOTIFIER_SLOW_CONSUMER_MS: positiveInt(10_000),
});
export const NotifierEnv = requireTokenKey(NotifierVariables);
export type NotifierConfig = z.infer<typeof NotifierEnv>;

export function normalizeOrigin(origin: string): string {
  const url = new URL(origin);
  return url.origin.toLowerCase();
}

/**
 * The configured origins, or the notifier's own: `http://localhost:<port>`, `http://127.0.0.1:<port>`
 * and `http://<HOST>:<port>` when HOST names one interface.
 */
export function allowedOrigins(
  config: Pick<NotifierConfig, 'NOTIFIER_ALLOWED_ORIGINS' | 'HOST'>,
  port: number,
): Set<string> {
  if (config.NOTIFIER_ALLOWED_ORIGINS && config.NOTIFIER_ALLOWED_ORIGINS.length > 0) {
    return new Set(config.NOTIFIER_ALLOWED_ORIGINS);
  }
  const hosts = ['localhost', '127.0.0.1'];
  if (!['0.0.0.0', '::', ''].includes(config.HOST))
    hosts.push(config.HOST.includes(':') ? `[${config.HOST}]` : config.HOST);
  return new Set(hosts.map((h) => normalizeOrigin(`http://${h}:${port}`)));
}

/**
 * Browsers always send `Origin` on a WebSocket upgrade and on a cross-origin POST: a foreign one
 * is refused. A request without one does not come from a web page (a server-side client), and
 * is let through: it still needs a ticket or token.
 */
export function originAllowed(origin: string | undefined, allowed: ReadonlySet<string>): boolean {
  if (origin === undefined) return true;
  try {
    return allowed.has(normalizeOrigin(origin));
  } catch {
    return false;
  }
}
