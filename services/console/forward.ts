import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { sendError } from '../../lib/http.ts';
import type { ConsoleConfig } from './config.ts';

export type Upstream = 'dispatcher' | 'projector' | 'auditor';

/**
 * One call the console's page may make: `GET|POST /api<path>` goes to the same path (or `to`) on
 * one service. Only these are forwarded, so the console exposes nothing else of the services
 * (their /metrics, /projection or POST /executions), whatever a page asks for.
 */
interface Route {
  method: 'GET' | 'POST';
  path: string;
  upstream: Upstream;
  to?: (params: Record<string, string>) => string;
}

export const ROUTES: readonly Route[] = [
  // Read models (projector): every user's, for the console's roles (contracts/auth.ts).
  { method: 'GET', path: '/executions', upstream: 'projector' },
  { method: 'GET', path: '/executions/:id', upstream: 'projector' },
  { method: 'GET', path: '/tools/metrics', upstream: 'projector' },
  { method: 'GET', path: '/tools/metrics/series', upstream: 'projector' },
  { method: 'GET', path: '/users/:userId/activity', upstream: 'projector' },
  // An execution's events as stored, and what can be done to it (dispatcher).
  {
    method: 'GET',
    path: '/executions/:id/events',
    upstream: 'dispatcher',
    to: ({ id }) => `/executions/${encodeURIComponent(id ?? '')}`,
  },
  { method: 'POST', path: '/executions/:id/cancel', upstream: 'dispatcher' },
  { method: 'POST', path: '/executions/:id/approve', upstream: 'dispatcher' },
  { method: 'POST', path: '/executions/:id/deny', upstream: 'dispatcher' },
  { method: 'GET', path: '/approvals', upstream: 'dispatcher' },
  { method: 'GET', path: '/tools', upstream: 'dispatcher' },
  // A user's history verified end to end (auditor).
  { method: 'GET', path: '/audit/users/:userId/verify', upstream: 'auditor' },
];

/** Response headers worth passing on to the page. */
const PASSED_ON = ['content-type', 'www-authenticate', 'retry-after', 'x-audit-id', 'location'];

/**
 * Registers the forwarding routes under /api. The user's `Authorization` header goes with each
 * call as it came; the service that answers decides (401/403/404) and its answer comes back as it
 * is. A service that does not answer is a 502 (refused) or 504 (too slow) in the API's error shape;
 * beyond CONSOLE_MAX_IN_FLIGHT calls at once, a call is refused 503 OVERLOADED without waiting.
 */
export function registerForwarding(app: FastifyInstance, config: ConsoleConfig): void {
  const base: Record<Upstream, string> = {
    dispatcher: config.CONSOLE_DISPATCHER_URL.replace(/\/$/, ''),
    projector: config.CONSOLE_PROJECTOR_URL.replace(/\/$/, ''),
    auditor: config.CONSOLE_AUDITOR_URL.replace(/\/$/, ''),
  };
  let inFlight = 0;

  for (const route of ROUTES) {
    app.route({
      method: route.method,
      url: `/api${route.path}`,
      handler: async (request: FastifyRequest, reply: FastifyReply) => {
        if (inFlight >= config.CONSOLE_MAX_IN_FLIGHT) {
          void reply.header('retry-after', '1');
          return sendError(
            reply,
            'OVERLOADED',
            `the console has ${inFlight} calls in flight; retry in a second`,
          );
        }
        const params = request.params as Record<string, string>;
        // `.` and `..` survive encoding and the URL parser resolves them: /executions/.. is `/`.
        const dots = Object.entries(params).find(([, v]) => v === '.' || v === '..');
        if (dots) return sendError(reply, 'VALIDATION', `${dots[0]} cannot be "${dots[1]}"`);
        const path = route.to ? route.to(params) : pathWith(route.path, params);
        const query = request.url.includes('?') ? request.url.slice(request.url.indexOf('?')) : '';
        const headers: Record<string, string> = {};
        if (request.headers.authorization) headers['authorization'] = request.headers.authorization;
        if (route.method === 'POST') headers['content-type'] = 'application/json';
        inFlight++;
        try {
          // The whole answer is read under the same deadline, so a service that stalls mid-body
          // cannot hold a slot.
          const answer = await fetch(`${base[route.upstream]}${path}${query}`, {
            method: route.method,
            headers,
            ...(route.method === 'POST' ? { body: JSON.stringify(request.body ?? {}) } : {}),
            redirect: 'manual',
            signal: AbortSignal.timeout(config.CONSOLE_UPSTREAM_TIMEOUT_MS),
          });
          const body = Buffer.from(await answer.arrayBuffer());
          for (const name of PASSED_ON) {
            const value = answer.headers.get(name);
            if (value !== null) void reply.header(name, value);
          }
          return reply.code(answer.status).header('cache-control', 'no-store').send(body);
        } catch (e) {
          request.log.warn({ err: e, upstream: route.upstream, path }, 'upstream call failed');
          return (e as Error).name === 'TimeoutError'
            ? sendError(
                reply,
                'UPSTREAM_TIMEOUT',
                `the ${route.upstream} did not answer within ${config.CONSOLE_UPSTREAM_TIMEOUT_MS} ms`,
              )
            : sendError(reply, 'UPSTREAM_UNAVAILABLE', `the ${route.upstream} is not reachable`);
        } finally {
          inFlight--;
        }
      },
    });
  }
}

/**
 * The route's path with its parameters filled in, each encoded (they are checked upstream): a
 * parameter is one path segment, never a `/`, `?` or `#` that would reach another path.
 */
const pathWith = (path: string, params: Record<string, string>): string =>
  path.replace(/:([A-Za-z]+)/g, (_, name: string) => encodeURIComponent(params[name] ?? ''));
