import { toNodeHandler } from '@modelcontextprotocol/node';
import { validateOriginHeader, type McpHttpHandler } from '@modelcontextprotocol/server';
import type { FastifyInstance } from 'fastify';
import type { Identify } from './principal.ts';

export const MCP_PATH = '/mcp';
/** RFC 9728 metadata: at the root, and path-aware for `/mcp` (what the SDK's clients try first). */
export const METADATA_PATH = '/.well-known/oauth-protected-resource';

export interface McpRouteOptions {
  handler: McpHttpHandler;
  identify: Identify;
  /** The URL of /mcp as clients see it: the metadata's `resource`. */
  resource: URL;
  authorizationServers: string[];
  allowedOrigins: string[];
  maxBodyBytes: number;
}

/** The metadata document's URL for `resource` (RFC 9728 section 3.1: inserted before the path). */
export const metadataUrlOf = (resource: URL): string =>
  new URL(`${METADATA_PATH}${resource.pathname === '/' ? '' : resource.pathname}`, resource).href;

/** A `WWW-Authenticate` parameter value (RFC 7235 quoted-string). */
const quoted = (s: string) => `"${s.replace(/[\\"]/g, '\\$&')}"`;

/**
 * `/mcp` as an OAuth resource server (MCP authorization, RFC 9728 and RFC 6750): the Origin is
 * checked first (403, DNS-rebinding defence), then the bearer token (401 with a challenge naming
 * the metadata), and only then does the request reach the SDK, which owns everything MCP:
 * JSON-RPC parsing, protocol versions, methods, body size.
 */
export async function registerMcpRoutes(app: FastifyInstance, o: McpRouteOptions): Promise<void> {
  const metadata = {
    resource: o.resource.href,
    ...(o.authorizationServers.length > 0 ? { authorization_servers: o.authorizationServers } : {}),
    bearer_methods_supported: ['header'],
    resource_name: 'Toolbus MCP gateway',
  };
  const metadataUrl = metadataUrlOf(o.resource);
  app.get(METADATA_PATH, async () => metadata);
  if (o.resource.pathname !== '/') app.get(`${METADATA_PATH}${o.resource.pathname}`, async () => metadata);

  const node = toNodeHandler(o.handler, {
    maxRequestBodySize: o.maxBodyBytes,
    onerror: (e) => app.log.error({ err: e }, 'MCP handler failed'),
  });

  await app.register(async (scope) => {
    // The SDK reads the body itself (with its own size bound and JSON-RPC errors): Fastify leaves it.
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));

    scope.all(MCP_PATH, async (req, reply) => {
      const origin = validateOriginHeader(req.headers.origin, o.allowedOrigins);
      if (!origin.ok) {
        return reply.code(403).send({
          jsonrpc: '2.0',
          id: null,
          error: { code: -32000, message: `Forbidden: ${origin.message}` },
        });
      }
      const who = await o.identify(req.headers.authorization);
      if (!who.ok) {
        const given = who.error.reason !== 'missing';
        const challenge = [
          ...(given ? [`error="invalid_token"`, `error_description=${quoted(who.error.message)}`] : []),
          `resource_metadata=${quoted(metadataUrl)}`,
        ].join(', ');
        return reply
          .code(401)
          .header('www-authenticate', `Bearer ${challenge}`)
          .send({
            error: given ? 'invalid_token' : 'unauthorized',
            error_description: given ? who.error.message : 'a bearer token is required',
          });
      }
      const { principal, token } = who.caller;
      reply.hijack();
      // toNodeHandler hands `req.auth` to the server factory as `authInfo`.
      Object.assign(req.raw, {
        auth: {
          token,
          clientId: principal.userId,
          scopes: [...principal.roles],
          ...(principal.expiresAt ? { expiresAt: Math.floor(principal.expiresAt / 1000) } : {}),
          extra: { caller: who.caller },
        },
      });
      await node(req.raw, reply.raw);
    });
  });
}
