import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
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
    to: ({ id }) => `/executions/${id}`,
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
 * is. A service that does not answer is a 502 (refused) or 504 (too slow) in the API's error shape.
 */
export function registerForwarding(app: FastifyInstance, config: ConsoleConfig): void {
  const base: Record<Upstream, string> = {
    dispatcher: config.CONSOLE_DISPATCHER_URL.replace(/\/$/, ''),
    projector: config.CONSOLE_PROJECTOR_URL.replace(/\/$/, ''),
    auditor: config.CONSOLE_AUDITOR_URL.replace(/\/$/, ''),
  };
  for (const route of ROUTES) {
    app.route({
      method: route.method,
      url: `/api${route.path}`,
      handler: async (request: FastifyRequest, reply: FastifyReply) => {
        const params = request.params as Record<string, string>;
        const path = route.to ? route.to(params) : pathWith(route.path, params);
        const query = request.url.includes('?') ? request.url.slice(request.url.indexOf('?')) : '';
        const headers: Record<string, string> = {};
        if (request.headers.authorization) headers['authorization'] = request.headers.authorization;
        let body: string | undefined;
        if (route.method === 'POST') {
          headers['content-type'] = 'application/json';
          body = JSON.stringify(request.body ?? {});
        }
        let answer: Response;
        try {
          answer = await fetch(`${base[route.upstream]}${path}${query}`, {
            method: route.method,
            headers,
            ...(body !== undefined ? { body } : {}),
            redirect: 'manual',
            signal: AbortSignal.timeout(config.CONSOLE_UPSTREAM_TIMEOUT_MS),
          });
        } catch (e) {
          const slow = (e as Error).name === 'TimeoutError';
          request.log.warn({ err: e, upstream: route.upstream, path }, 'upstream call failed');
          return reply.code(slow ? 504 : 502).send({
            error: {
              code: slow ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNAVAILABLE',
              message: slow
                ? `the ${route.upstream} did not answer within ${config.CONSOLE_UPSTREAM_TIMEOUT_MS} ms`
                : `the ${route.upstream} is not reachable`,
            },
          });
        }
        for (const name of PASSED_ON) {
          const value = answer.headers.get(name);
          if (value !== null) void reply.header(name, value);
        }
        return reply
          .code(answer.status)
          .header('cache-control', 'no-store')
          .send(Buffer.from(await answer.arrayBuffer()));
      },
    });
  }
}

/** The route's path with its parameters filled in, each encoded (they are checked upstream). */
const pathWith = (path: string, params: Record<string, string>): string =>
  path.replace(/:([A-Za-z]+)/g, (_, name: string) => encodeURIComponent(params[name] ?? ''));
