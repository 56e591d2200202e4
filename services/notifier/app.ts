import type { AddressInfo } from 'node:net';
import fastifyWebsocket from '@fastify/websocket';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { pino, type DestinationStream } from 'pino';
import { Counter, Gauge } from 'prom-client';
import { CLOSE_CODES } from '../../contracts/index.ts';
import { AuthError, tokenVerifierFromConfig } from '../../lib/auth.ts';
import { createEventStore } from '../../lib/eventstore/index.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { createHttpApp, errorBody, sendError } from '../../lib/http.ts';
import { REDACT_PATHS, type Logger } from '../../lib/log.ts';
import { connectNats, natsCredentialsFromConfig, natsReady, type NatsConnection } from '../../lib/nats.ts';
import { createRedis, type Redis } from '../../lib/redis.ts';
import { allowedOrigins, originAllowed, type NotifierConfig } from './config.ts';
import { Hub } from './hub.ts';
import { CatchUpReads, UnauthenticatedSockets, UserSockets } from './limits.ts';
import { authenticate } from './protocol.ts';
import { CLOSE_TRY_AGAIN_LATER, Session, type Admission, type SessionContext } from './session.ts';
import { registerLivePage } from './static.ts';
import { TicketRateExceededError, TicketStore, TicketsUnavailableError } from './tickets.ts';

export interface NotifierDeps {
  /** Shared with the caller (tests); otherwise the configured store is opened (KURRENTDB_URL, else DATABASE_URL). */
  store?: EventStore;
  nats?: NatsConnection;
  redis?: Redis;
  /** Where log lines go (default stdout). */
  logStream?: DestinationStream;
}

export interface Notifier {
  app: FastifyInstance;
  /** `http://host:port` of the listening server. */
  address: string;
  port: number;
  /** Reads every watched user's stream for events not sent yet (also run on a timer and after a NATS reconnect). */
  checkTails(): Promise<void>;
  /**
   * Open sockets, scopes with a NATS subscription, and the catch-up reads (replays, gap fills) in
   * flight and waiting: for tests and diagnostics.
   */
  stats(): { sockets: number; scopes: string[]; catchUpReads: { running: number; queued: number } };
  close(): Promise<void>;
}

/** Live events queued per socket behind a replay or a gap fill before they are left to the store. */
const MAX_QUEUE = 10_000;

/**
 * An error on an open WebSocket. What a client caused (a frame over NOTIFIER_MAX_FRAME_BYTES, bad
 * UTF-8, an unmasked frame: `ws` has already closed the socket with the matching code; a reset
 * connection) is logged at debug, without a stack: any client can cause it, as often as it likes,
 * and it says nothing about the notifier. Anything else is an error. The socket is dropped.
 */
function socketError(
  this: unknown,
  error: Error,
  socket: { terminate(): void },
  request: FastifyRequest,
): void {
  const code = (error as NodeJS.ErrnoException).code ?? '';
  if (code.startsWith('WS_ERR_') || code === 'ECONNRESET' || code === 'EPIPE') {
    request.log.debug({ code, reason: error.message }, 'websocket closed on a client error');
  } else {
    request.log.error({ err: error }, 'websocket error');
  }
  socket.terminate();
}

/** WebSocket close code for a socket refused for a while: too many unauthenticated sockets, or too many of its user's. */
export { CLOSE_TRY_AGAIN_LATER };

/**
 * Starts the notifier: HTTP (live page, POST /tickets, health, metrics) and the WebSocket
 * endpoint /ws. What sockets are sent comes from the event store; NATS says when to read it.
 */
export async function startNotifier(config: NotifierConfig, deps: NotifierDeps = {}): Promise<Notifier> {
  const log = pino(
    {
      name: 'notifier',
      level: config.LOG_LEVEL,
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
      // A ticket travels in the query string: request logs keep the path only.
      serializers: {
        req: (req: { method?: string; url?: string; ip?: string }) => ({
          method: req.method,
          url: req.url?.split('?')[0],
          remoteAddress: req.ip,
        }),
      },
    },
    deps.logStream ?? process.stdout,
  );

  const owned: Array<() => Promise<unknown>> = [];
  const cleanup = async () => {
    for (const close of owned.reverse()) await close().catch(() => undefined);
  };
  try {
    const store = deps.store ?? (await createEventStore(config));
    if (!deps.store) owned.push(() => store.close());
    const nc =
      deps.nats ??
      (await connectNats(config.NATS_URL, 'toolbus-notifier', natsCredentialsFromConfig(config)));
    if (!deps.nats) owned.push(() => nc.close());
    const redis = deps.redis ?? createRedis(config.REDIS_URL);
    if (!deps.redis) owned.push(() => redis.quit());
    return await build(config, { store, nc, redis, log }, cleanup);
  } catch (e) {
    await cleanup();
    throw e;
  }
}

async function build(
  config: NotifierConfig,
  { store, nc, redis, log }: { store: EventStore; nc: NatsConnection; redis: Redis; log: Logger },
  closeOwned: () => Promise<void>,
): Promise<Notifier> {
  const verifier = tokenVerifierFromConfig(config);
  const tickets = new TicketStore(
    redis,
    config.NOTIFIER_TICKET_TTL_SECONDS,
    config.NOTIFIER_TICKETS_PER_MINUTE,
  );
  const unauthenticated = new UnauthenticatedSockets(
    config.NOTIFIER_MAX_UNAUTHENTICATED,
    config.NOTIFIER_MAX_UNAUTHENTICATED_PER_ADDRESS,
  );
  const userSockets = new UserSockets(config.NOTIFIER_MAX_SOCKETS_PER_USER);
  const catchUp = new CatchUpReads(
    config.NOTIFIER_MAX_CATCHUP_READS,
    config.NOTIFIER_MAX_CATCHUP_READS_PER_USER,
  );
  const app = createHttpApp({
    service: 'notifier',
    checks: {
      eventstore: () => store.ping(),
      nats: () => natsReady(nc),
    },
    fastify: { logger: undefined, loggerInstance: log },
  });

  const registers = [app.metrics];
  const connections = new Gauge({ name: 'toolbus_notifier_connections', help: 'Open WebSockets', registers });
  const natsSubscriptions = new Gauge({
    name: 'toolbus_notifier_nats_subscriptions',
    help: 'Scopes (users, or * for admins) with a NATS subscription',
    registers,
  });
  const sent = new Counter({
    name: 'toolbus_notifier_events_sent_total',
    help: 'Event notifications sent, by where they came from (live NATS, replay, gap fill)',
    labelNames: ['source'] as const,
    registers,
  });
  const closed = new Counter({
    name: 'toolbus_notifier_sockets_closed_total',
    help: 'Sockets closed by the notifier, by reason',
    labelNames: ['reason'] as const,
    registers,
  });
  const refused = new Counter({
    name: 'toolbus_notifier_refused_total',
    help: 'Requests refused (foreign origin, bad token, tickets unavailable, ticket rate, too many unauthenticated sockets, too many sockets of one user)',
    labelNames: ['reason'] as const,
    registers,
  });
  const overflowed = new Counter({
    name: 'toolbus_notifier_queue_overflows_total',
    help: 'Live events not queued for a busy socket (read from the event store afterwards)',
    registers,
  });
  const ticketsIssued = new Counter({
    name: 'toolbus_notifier_tickets_issued_total',
    help: 'Tickets issued',
    registers,
  });
  const invalidMessages = new Counter({
    name: 'toolbus_notifier_invalid_nats_messages_total',
    help: 'NATS messages ignored because they were not valid notifications of their subject user',
    registers,
  });

  const mismatched = new Counter({
    name: 'toolbus_notifier_mismatched_events_total',
    help: 'NATS event messages that name another event than the store holds at their revision (never shown)',
    registers,
  });
  const progressDropped = new Counter({
    name: 'toolbus_notifier_progress_dropped_total',
    help: 'Progress messages dropped: their execution is not running according to the event store',
    registers,
  });
  new Gauge({
    name: 'toolbus_notifier_unauthenticated_sockets',
    help: 'Open sockets that have not authenticated yet',
    registers,
    collect() {
      this.set(unauthenticated.size);
    },
  });
  new Gauge({
    name: 'toolbus_notifier_catchup_reads_waiting',
    help: 'Store reads of replays and gap fills waiting for their turn (NOTIFIER_MAX_CATCHUP_READS*)',
    registers,
    collect() {
      this.set(catchUp.queued);
    },
  });

  const hub = new Hub(nc, store, log, { natsSubscriptions, invalidMessages, mismatched, progressDropped });
  const sessions = new Set<Session>();
  const ctx: SessionContext = {
    store,
    hub,
    verifier,
    log,
    limits: {
      maxBufferBytes: config.NOTIFIER_MAX_BUFFER_BYTES,
      authTimeoutMs: config.NOTIFIER_AUTH_TIMEOUT_MS,
      slowConsumerMs: config.NOTIFIER_SLOW_CONSUMER_MS,
      messagesPerSecond: config.NOTIFIER_MAX_MESSAGES_PER_SECOND,
      messageBurst: config.NOTIFIER_MESSAGE_BURST,
      maxQueue: MAX_QUEUE,
      maxQueueBytes: Math.max(config.NOTIFIER_MAX_BUFFER_BYTES, 1024 * 1024),
      maxSocketsPerUser: config.NOTIFIER_MAX_SOCKETS_PER_USER,
    },
    metrics: { sent, closed, overflowed, refused },
    userSockets,
    catchUp,
    onDispose: (session) => {
      if (sessions.delete(session)) connections.set(sessions.size);
    },
  };

  let origins = new Set<string>();
  const guardOrigin = async (request: FastifyRequest, reply: FastifyReply) => {
    const origin = request.headers.origin;
    if (originAllowed(origin, origins)) return;
    refused.inc({ reason: 'origin' });
    request.log.warn({ origin: String(origin).slice(0, 200) }, 'refused a foreign origin');
    return reply.code(403).send(errorBody('FORBIDDEN_ORIGIN', 'this origin may not use the notifier'));
  };

  const admissions = new WeakMap<object, Admission>();
  const redeemTicket = async (request: FastifyRequest) => {
    // A plain GET (no upgrade) is answered 400 below: its ticket stays unspent.
    if (!request.ws) return;
    const ticket = (request.query as Record<string, unknown> | undefined)?.['ticket'];
    if (ticket === undefined) return;
    if (typeof ticket !== 'string') {
      admissions.set(request.raw, { kind: 'refused', message: 'one ticket only' });
      return;
    }
    try {
      const grant = await tickets.redeem(ticket);
      admissions.set(
        request.raw,
        grant ? { kind: 'ticket', grant } : { kind: 'refused', message: 'ticket unknown, used or expired' },
      );
    } catch (e) {
      if (!(e instanceof TicketsUnavailableError)) throw e;
      request.log.warn('ticket store unavailable; refusing the ticket');
      admissions.set(request.raw, {
        kind: 'refused',
        message: 'tickets are unavailable; send an auth message instead',
      });
    }
  };

  await app.register(fastifyWebsocket, {
    options: { maxPayload: config.NOTIFIER_MAX_FRAME_BYTES },
    errorHandler: socketError,
  });
  app.route({
    method: 'GET',
    url: '/ws',
    onRequest: guardOrigin,
    preValidation: redeemTicket,
    // Opened without a WebSocket upgrade (a browser's address bar, curl): said so, in the error shape.
    handler: (_request, reply) =>
      sendError(
        reply,
        'BAD_REQUEST',
        '/ws is a WebSocket endpoint: connect with a WebSocket client (GET with Upgrade: websocket), see docs/notifier.md',
      ),
    wsHandler: (socket, request) => {
      let admission = admissions.get(request.raw);
      if (!admission) {
        const release = unauthenticated.enter(request.ip);
        if (!release) {
          refused.inc({ reason: 'unauthenticated_sockets' });
          request.log.warn({ address: request.ip }, 'too many unauthenticated sockets; refused');
          socket.close(CLOSE_TRY_AGAIN_LATER, 'TOO_MANY_UNAUTHENTICATED');
          return;
        }
        admission = { kind: 'none', release };
      }
      const session = new Session(socket, ctx, admission);
      if (!session.isClosed) {
        sessions.add(session);
        connections.set(sessions.size);
      }
    },
  });

  app.post('/tickets', { onRequest: guardOrigin }, async (request, reply) => {
    reply.header('cache-control', 'no-store');
    let grant;
    try {
      grant = await authenticate(verifier, request.headers.authorization);
    } catch (e) {
      if (!(e instanceof AuthError)) throw e;
      refused.inc({ reason: `token_${e.reason}` });
      request.log.warn({ reason: e.reason }, `ticket refused: ${e.message}`);
      return reply
        .code(401)
        .header('www-authenticate', 'Bearer')
        .send(errorBody('UNAUTHENTICATED', e.message, { reason: e.reason }));
    }
    try {
      const ticket = await tickets.issue(grant);
      ticketsIssued.inc();
      return reply.code(201).send({
        ticket,
        expiresInSeconds: config.NOTIFIER_TICKET_TTL_SECONDS,
        userId: grant.principal.userId,
      });
    } catch (e) {
      if (e instanceof TicketRateExceededError) {
        refused.inc({ reason: 'ticket_rate' });
        request.log.warn({ userId: grant.principal.userId }, 'ticket refused: over the rate');
        return reply
          .code(429)
          .header('retry-after', String(e.retryAfterSeconds))
          .send(errorBody('TOO_MANY_TICKETS', e.message));
      }
      if (!(e instanceof TicketsUnavailableError)) throw e;
      refused.inc({ reason: 'tickets_unavailable' });
      request.log.warn('ticket store unavailable');
      return reply
        .code(503)
        .send(
          errorBody(
            'TICKETS_UNAVAILABLE',
            'tickets are unavailable; open /ws and send {type:"auth", token} first',
          ),
        );
    }
  });

  await registerLivePage(app);

  // Tail checks: every feed reads its stream after a NATS reconnect (publishes may have been lost
  // meanwhile). The periodic one is off by default: the dispatchers' relay publishes every
  // committed event, so no publish is lost between the commit and NATS; with
  // DISPATCHER_EVENT_PUBLISH=commit one at the end of a burst would wait for it.
  let closing = false;
  const checkTails = () => hub.wakeAll();
  void (async () => {
    for await (const status of nc.status()) {
      if (closing) return;
      if (status.type === 'disconnect') log.warn('NATS disconnected; live events wait for the reconnect');
      if (status.type === 'reconnect') {
        log.info('NATS reconnected; checking what was missed');
        // The flush returns once the server has our subscriptions again: nothing falls in between.
        await nc.flush().catch(() => undefined);
        await checkTails();
      }
    }
  })();
  const tailTimer =
    config.NOTIFIER_TAIL_CHECK_MS > 0
      ? setInterval(() => void checkTails(), config.NOTIFIER_TAIL_CHECK_MS)
      : undefined;
  const pingTimer = setInterval(() => {
    for (const session of sessions) {
      if (!session.alive) {
        session.terminate();
        continue;
      }
      session.alive = false;
      session.ws.ping();
    }
  }, config.NOTIFIER_PING_INTERVAL_MS);

  await app.listen({ host: config.HOST, port: config.NOTIFIER_PORT });
  const port = (app.server.address() as AddressInfo).port;
  origins = allowedOrigins(config, port);
  const host = ['0.0.0.0', '::'].includes(config.HOST)
    ? '127.0.0.1'
    : config.HOST.includes(':')
      ? `[${config.HOST}]`
      : config.HOST;
  log.info({ port, origins: [...origins] }, 'notifier listening');

  return {
    app,
    address: `http://${host}:${port}`,
    port,
    checkTails,
    stats: () => ({
      sockets: sessions.size,
      scopes: hub.scopeNames(),
      catchUpReads: { running: catchUp.running, queued: catchUp.queued },
    }),
    async close() {
      if (closing) return;
      closing = true;
      clearInterval(tailTimer);
      clearInterval(pingTimer);
      for (const session of [...sessions]) session.close(CLOSE_CODES.goingAway, 'GOING_AWAY', 'shutdown');
      hub.close();
      await app.close();
      await closeOwned();
    },
  };
}
