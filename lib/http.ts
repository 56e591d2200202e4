import Fastify, {
  LogController,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerOptions,
} from 'fastify';
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { collectDefaultMetrics, Registry } from 'prom-client';
import { REDACT_PATHS } from './log.ts';
import { httpStatusOfCode, type Code } from '../contracts/errors.ts';

export type ReadinessCheck = () => Promise<void>;

/**
 * A connection must begin its first request within this many milliseconds of silence, else it is
 * destroyed. Node's `requestTimeout` and `headersTimeout` only count once a request has begun, so
 * without it a socket that connects and sends nothing holds a file descriptor for ever.
 */
export const FIRST_REQUEST_TIMEOUT_MS = 10_000;

export interface HttpAppOptions {
  service: string;
  /** Each must resolve for `/health/ready` to answer 200. */
  checks?: Record<string, ReadinessCheck>;
  logLevel?: string;
  bodyLimit?: number;
  /** Default {@link FIRST_REQUEST_TIMEOUT_MS}; shorter in tests. */
  firstRequestTimeoutMs?: number;
  /** Connections held at once; past it a new one is closed at once. Default {@link defaultMaxConnections}. */
  maxConnections?: number;
  fastify?: FastifyServerOptions;
}

/** Why a body Fastify's JSON parsing refused is refused, in words. */
function unreadableJson(body: string): string {
  try {
    JSON.parse(body);
  } catch (e) {
    return `the body is not JSON (${(e as Error).message})`;
  }
  return 'the body has a key "__proto__", or "constructor" holding "prototype", which is not allowed';
}

/**
 * A request Node's parser refuses before Fastify sees it (a header with a line break in it, say a
 * token captured with npm's banner), answered in the one error shape rather than Node's or
 * Fastify's own.
 */
function answerClientError(err: Error & { code?: string }, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const [status, reason, message] =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? [431, 'Request Header Fields Too Large', 'the request headers are too large']
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'Request Timeout', 'the request did not arrive in time']
        : [
            400,
            'Bad Request',
            `the request could not be read (${err.code ?? 'malformed'}): a header value with a line break or a control character in it? (a token captured with npm's banner: use npm run -s)`,
          ];
  const body = JSON.stringify({ error: { code: 'BAD_REQUEST', message } });
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}

/**
 * The HTTP surface every service shares: pino logs (tokens censored; one line per request, at
 * debug for health checks and metrics scrapes), `/health/live`,
 * `/health/ready` (each dependency checked with a deadline), and Prometheus `/metrics` from the
 * app's own registry (`app.metrics`). Routes of the service are registered on the returned app.
 */
export function createHttpApp(options: HttpAppOptions): FastifyInstance & { metrics: Registry } {
  const app = Fastify({
    logger: {
      name: options.service,
      level: options.logLevel ?? process.env['LOG_LEVEL'] ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
    },
    bodyLimit: options.bodyLimit ?? 1024 * 1024,
    // A request (headers and body) must arrive within a minute: Fastify's default is no limit, so a
    // client trickling a body could hold a socket for ever (WebSockets and event streams are
    // answers, not requests: unaffected).
    requestTimeout: 60_000,
    logController: new RequestLines(),
    clientErrorHandler: answerClientError,
    ...options.fastify,
  });
  // Every error answer has one shape, whoever answers: this handler (Fastify's refusals of a
  // request it cannot parse or route, thrown errors), or a service's own, set in a plugin scope of
  // its routes, which falls back to `answerError`.
  app.setErrorHandler(answerError);
  // Every body these services read is JSON: one sent as text/plain (Fastify reads it as a string
  // by default) is refused as the wrong media type (415), not read and then found not an object.
  app.removeContentTypeParser('text/plain');
  // Fastify's JSON parsing (which refuses `__proto__` and `constructor.prototype` keys), with a
  // message that says what is wrong: Fastify's says "not valid JSON" for both.
  const strictJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) =>
    strictJson(request, String(body), (error, value) => {
      if ((error as FastifyError | null)?.code !== 'FST_ERR_CTP_INVALID_JSON_BODY') return done(error, value);
      done(Object.assign(error!, { message: unreadableJson(String(body)) }), undefined);
    }),
  );
  app.setNotFoundHandler((request, reply) =>
    reply
      .code(404)
      .send(errorBody('NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]!.slice(0, 200)}`)),
  );
  closeSilentConnections(app, options.firstRequestTimeoutMs ?? FIRST_REQUEST_TIMEOUT_MS);
  app.server.maxConnections = options.maxConnections ?? defaultMaxConnections();
  const registry = new Registry();
  registry.setDefaultLabels({ service: options.service });
  // The event-loop delay is sampled every 50 ms rather than prom-client's 10 (a timer firing 100
  // times a second in every process, idle or not, for metrics scraped every few seconds); a stall
  // still shows in the lag metrics, sampled less finely.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 50 });
  app.decorate('metrics', registry);

  app.get('/health/live', async () => ({ status: 'ok' }));
  app.get('/health/ready', async (_req, reply) => {
    const results = await Promise.all(
      Object.entries(options.checks ?? {}).map(async ([name, check]) => {
        try {
          await withDeadline(check(), 2_000);
          return [name, 'ok'] as const;
        } catch (e) {
          return [name, (e as Error).message || 'failed'] as const;
        }
      }),
    );
    const ready = results.every(([, status]) => status === 'ok');
    return reply
      .code(ready ? 200 : 503)
      .send({ status: ready ? 'ready' : 'not ready', checks: Object.fromEntries(results) });
  });
  app.get('/metrics', async (_req, reply) => {
    return reply.type(registry.contentType).send(await registry.metrics());
  });
  return app;
}

/** The body of every error answer of every service's HTTP API (docs/dispatcher.md, "HTTP"). */
export interface ErrorBody {
  error: { code: Code; message: string; details?: unknown };
}

/** Every code is the catalogue's (contracts/errors.ts), which says its status and meaning. */
export const errorBody = (code: Code, message: string, details?: unknown): ErrorBody => ({
  error: { code, message, ...(details === undefined ? {} : { details }) },
});

/** Answers `code` in the error shape, with the catalogue's status for it (contracts/errors.ts). */
export const sendError = (
  reply: FastifyReply,
  code: Code,
  message: string,
  details?: unknown,
): FastifyReply => reply.code(httpStatusOfCode(code)).send(errorBody(code, message, details));

/** The code of a client error that Fastify (or a plugin) raised with only an HTTP status. */
const CLIENT_ERROR_CODES: Record<number, Code> = {
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  429: 'TOO_MANY_REQUESTS',
};

/**
 * Answers an error no route handled: a client error (a body that is not JSON, over the limit, of
 * an unknown type) with its status and Fastify's message, anything else as a 500 whose details
 * stay in the log. Services' own error handlers end with it.
 */
export function answerError(
  error: Error & { statusCode?: number },
  request: FastifyRequest,
  reply: FastifyReply,
): FastifyReply {
  const status = error.statusCode;
  if (status !== undefined && status >= 400 && status < 500) {
    return reply.code(status).send(errorBody(CLIENT_ERROR_CODES[status] ?? 'BAD_REQUEST', error.message));
  }
  request.log.error({ err: error }, 'request failed');
  // A server error keeps its status (a 503 stays one); its details stay in the log.
  const serverStatus = status !== undefined && status >= 500 && status < 600 ? status : 500;
  return reply
    .code(serverStatus)
    .send(errorBody(serverStatus === 503 ? 'UNAVAILABLE' : 'INTERNAL', 'internal error'));
}

/** File descriptors a service keeps for itself beyond its HTTP connections (see defaultMaxConnections). */
export const RESERVED_DESCRIPTORS = 512;

/**
 * The connections an HTTP service accepts at once: HTTP_MAX_CONNECTIONS when set, else the
 * process's open-file limit less RESERVED_DESCRIPTORS. A local process that opens sockets as fast
 * as it can (each held until the first-request timeout, or a minute trickling headers) would
 * otherwise take every descriptor, and the service could no longer open its own connections to
 * NATS, PostgreSQL or Redis: the connections past the cap are closed as they come, and the service
 * goes on serving the bus and the connections it holds. Node does not expose the limit; Linux
 * says it in /proc/self/limits (elsewhere, 4,096 is assumed). Never below 64.
 */
export function defaultMaxConnections(
  env: Record<string, string | undefined> = process.env,
  limits: () => string = () => readFileSync('/proc/self/limits', 'utf8'),
): number {
  const configured = env['HTTP_MAX_CONNECTIONS'];
  if (configured !== undefined && configured !== '') {
    const n = Number(configured);
    if (!Number.isInteger(n) || n < 1) {
      throw new Error(`HTTP_MAX_CONNECTIONS must be a positive integer, not ${JSON.stringify(configured)}`);
    }
    return n;
  }
  return Math.max(64, openFileLimit(limits) - RESERVED_DESCRIPTORS);
}

/**
 * This process's limit on open files, from /proc/self/limits (Node raises its soft limit to the hard
 * one as it starts, so this is usually the hard limit); 4,096 where it cannot be read.
 */
export function openFileLimit(limits: () => string): number {
  try {
    const soft = /^Max open files\s+(\d+|unlimited)/m.exec(limits())?.[1];
    if (soft === 'unlimited') return 1_048_576;
    if (soft) return Number(soft);
  } catch {
    // not Linux, or no /proc: the assumption below
  }
  return 4_096;
}

/**
 * Destroys a connection that stays silent for `ms` before its first request begins. The socket's
 * inactivity timeout is armed on connection and put back to the server's own (`server.timeout`, 0
 * by default) when a request begins (Fastify's `onRequest`, which WebSocket upgrades through
 * @fastify/websocket pass too), so long requests, event streams and WebSockets are untouched. Later
 * silences on a kept-alive connection are Node's `keepAliveTimeout`'s.
 */
function closeSilentConnections(app: FastifyInstance, ms: number): void {
  const waiting = new WeakSet<Socket>();
  app.server.on('connection', (socket: Socket) => {
    waiting.add(socket);
    socket.setTimeout(ms);
    socket.once('timeout', () => {
      if (waiting.has(socket)) socket.destroy();
    });
  });
  app.addHook('onRequest', (req, _reply, done) => {
    const socket = req.raw.socket as Socket | undefined;
    if (socket && waiting.delete(socket)) socket.setTimeout(app.server.timeout);
    done();
  });
}

/**
 * One log line per request, when it is answered, instead of fastify's two at info: its method,
 * path (never the query), status and time. Health checks
 * and scrapes come every few seconds and say nothing an operator reads: debug. Errors keep
 * fastify's own lines.
 */
class RequestLines extends LogController {
  override incomingRequest(): void {}

  override requestCompleted(error: Error | null | undefined, req: FastifyRequest, reply: FastifyReply): void {
    if (error) return super.requestCompleted(error, req, reply);
    // The path only: a query string may carry a secret (the notifier's WebSocket ticket).
    const path = req.url.split('?', 1)[0]!;
    const routine = path.startsWith('/health/') || path === '/metrics';
    const level = routine ? 'debug' : reply.statusCode >= 500 ? 'warn' : 'info';
    req.log[level](
      {
        method: req.method,
        url: path,
        statusCode: reply.statusCode,
        ms: Math.round(reply.elapsedTime * 10) / 10,
      },
      'request',
    );
  }
}

function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise,
    new Promise<never>(
      (_, reject) => (timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms)),
    ),
  ]).finally(() => clearTimeout(timer));
}

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Registry;
  }
}

/**
 * Authentication that runs before the body is read: `onRequest` (a route option) verifies the
 * caller, answering a refusal itself, so that no body of a stranger's request is read or parsed;
 * `authenticate` gives its handler that caller (or verifies, for a route without the hook).
 * `verify` answers the refusal and returns null when the caller is not let in.
 */
export function authenticateBeforeBody<P>(
  verify: (req: FastifyRequest, reply: FastifyReply) => Promise<P | null>,
): {
  onRequest: (req: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply | undefined>;
  authenticate: (req: FastifyRequest, reply: FastifyReply) => Promise<P | null>;
} {
  const verified = new WeakMap<FastifyRequest, P>();
  return {
    async onRequest(req, reply) {
      const caller = await verify(req, reply);
      if (caller === null) return reply;
      verified.set(req, caller);
      return undefined;
    },
    authenticate: (req, reply) => {
      const known = verified.get(req);
      return known === undefined ? verify(req, reply) : Promise.resolve(known);
    },
  };
}
