import { toNodeHandler } from '@modelcontextprotocol/node';
import { validateHostHeader, validateOriginHeader, type McpHttpHandler } from '@modelcontextprotocol/server';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { checkJsonShape } from '../../contracts/index.ts';
import type { Identify } from './principal.ts';
import type { Caller } from './server.ts';

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
  /** Host header values allowed; null: any. */
  allowedHosts: string[] | null;
  maxBodyBytes: number;
  /** Told of each request refused before MCP (401, 403). */
  onRefused?: (status: 401 | 403) => void;
}

/** The metadata document's URL for `resource` (RFC 9728 section 3.1: inserted before the path). */
export const metadataUrlOf = (resource: URL): string =>
  new URL(`${METADATA_PATH}${resource.pathname === '/' ? '' : resource.pathname}`, resource).href;

/** A `WWW-Authenticate` parameter value (RFC 7235 quoted-string). */
const quoted = (s: string) => `"${s.replace(/[\\"]/g, '\\$&')}"`;

/**
 * `/mcp` as an OAuth resource server (MCP authorization, RFC 9728 and RFC 6750): the Host and
 * Origin are checked first (403, DNS-rebinding defence), then the bearer token (401 with a
 * challenge naming the metadata), before any body is read; then the body is read within its bound
 * (413) and a batch refused; everything else MCP (JSON-RPC parsing, protocol versions, methods)
 * is the SDK's.
 */
export async function registerMcpRoutes(app: FastifyInstance, o: McpRouteOptions): Promise<void> {
  const metadata = {
    resource: o.resource.href,
    ...(o.authorizationServers.length > 0 ? { authorization_servers: o.authorizationServers } : {}),
    bearer_methods_supported: ['header'],
    resource_name: 'Toolbus MCP gateway',
  };
  const metadataUrl = metadataUrlOf(o.resource);
  // Public, and read by browser-based clients to find the authorization server: any origin.
  const publicMetadata = async (_req: unknown, reply: FastifyReply) => {
    reply.header('access-control-allow-origin', '*');
    return metadata;
  };
  app.get(METADATA_PATH, publicMetadata);
  if (o.resource.pathname !== '/') app.get(`${METADATA_PATH}${o.resource.pathname}`, publicMetadata);

  const node = toNodeHandler(o.handler, {
    maxRequestBodySize: o.maxBodyBytes,
    onerror: (e) => app.log.error({ err: e }, 'MCP handler failed'),
  });

  await app.register(async (scope) => {
    // Who is asking is settled before any body is parsed: an unauthenticated request is answered at
    // once, and at most the body limit of it is read (and dropped; see the onSend hook below).
    scope.addHook('onRequest', async (req, reply) => {
      if (req.routeOptions.url !== MCP_PATH) return; // the scope's only route; 404s pass through
      const host = o.allowedHosts ? validateHostHeader(req.headers.host, o.allowedHosts) : null;
      const origin = validateOriginHeader(req.headers.origin, o.allowedOrigins);
      const forbidden = host && !host.ok ? host : !origin.ok ? origin : null;
      if (forbidden) {
        o.onRefused?.(403);
        return reply.code(403).send(rpcError(-32000, `Forbidden: ${forbidden.message}`));
      }
      // CORS for a browser-based client on an allowed origin (GATEWAY_ALLOWED_ORIGINS): without it
      // the browser shows the page none of the answers, and its preflight (the Authorization
      // header asks for one) never carries a token. Set on the raw response, so that the SDK's
      // answers (the route hijacks the reply) carry it too. No cookies are used: tokens are bearer.
      if (req.headers.origin !== undefined) {
        reply.raw.setHeader('access-control-allow-origin', req.headers.origin);
        reply.raw.setHeader('vary', 'origin');
        reply.raw.setHeader('access-control-expose-headers', CORS_EXPOSED_HEADERS);
        if (req.method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined) {
          return reply
            .code(204)
            .header('access-control-allow-methods', 'GET, POST, DELETE')
            .header('access-control-allow-headers', CORS_ALLOWED_HEADERS)
            .header('access-control-max-age', '600')
            .send();
        }
      }
      const who = await o.identify(req.headers.authorization);
      if (who.ok) {
        callers.set(req, who.caller);
        return;
      }
      o.onRefused?.(401);
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
    });

    // An answer sent before the body was read (401, 403, 413; Fastify closes the connection on a
    // 413): a client still sending its body may have its write reset before it reads the answer
    // ("fetch failed"). Node reads and drops the rest of a body whose declared length is bounded,
    // and the client gets its answer on a connection it keeps; a longer or undeclared body has its
    // connection closed. A refused caller is held to the size an accepted one may send.
    scope.addHook('onSend', async (req, reply, payload) => {
      if (req.raw.complete) return payload;
      const bound = callers.has(req) ? Math.max(DRAIN_MAX_BYTES, o.maxBodyBytes) : o.maxBodyBytes;
      if (Number(req.headers['content-length']) <= bound) reply.removeHeader('connection');
      else reply.header('connection', 'close');
      return payload;
    });

    // The body as bytes, bounded; the SDK parses it (and answers bad JSON, content types, methods).
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: o.maxBodyBytes }, (_req, body, done) =>
      done(null, body),
    );
    scope.setErrorHandler(async (e: Error & { statusCode?: number }, _req, reply) => {
      if (e.statusCode === 413) {
        return reply.code(413).send(rpcError(-32600, `the body is over ${o.maxBodyBytes} bytes`));
      }
      throw e;
    });

    scope.all(MCP_PATH, async (req, reply) => {
      const caller = callers.get(req)!;
      const body = Buffer.isBuffer(req.body) ? req.body : undefined;
      if (body && isBatch(body)) {
        // Batches left JSON-RPC-over-MCP in 2025-06-18; the SDK's stateless path would still run them.
        return reply
          .code(400)
          .send(rpcError(-32600, 'JSON-RPC batches are not supported: send one message per request'));
      }
      const hidden = body ? hiddenArgumentsProblem(body) : null;
      if (hidden) {
        return reply
          .code(200)
          .send({ jsonrpc: '2.0', id: hidden.id, error: { code: -32602, message: hidden.message } });
      }
      const { principal, token } = caller;
      reply.hijack();
      await node(
        {
          method: req.raw.method,
          url: req.raw.url,
          headers: req.raw.headers,
          // toNodeHandler hands `auth` to the server factory as `authInfo`.
          auth: {
            token,
            clientId: principal.userId,
            scopes: [...principal.roles],
            ...(principal.expiresAt ? { expiresAt: Math.floor(principal.expiresAt / 1000) } : {}),
            extra: { caller },
          },
          async *[Symbol.asyncIterator]() {
            if (body) yield body;
          },
        },
        reply.raw,
      );
    });
  });
}

/** What a browser-based client may send to /mcp, and read of the answers (MCP's Streamable HTTP headers). */
const CORS_ALLOWED_HEADERS =
  'authorization, content-type, accept, mcp-protocol-version, mcp-session-id, last-event-id';
const CORS_EXPOSED_HEADERS = 'mcp-session-id, mcp-protocol-version, www-authenticate';

/** The verified caller of each request to /mcp, from the onRequest hook to the handler. */
const callers = new WeakMap<object, Caller>();

/** The longest over-limit body of an authenticated caller read (and dropped) so that its client reads the 413. */
const DRAIN_MAX_BYTES = 64 * 1024 * 1024;

const rpcError = (code: number, message: string) => ({ jsonrpc: '2.0', id: null, error: { code, message } });

/**
 * A `tools/call` whose arguments hold a key the dispatcher refuses (`__proto__`) that the SDK's
 * parsing would drop (plain objects take `__proto__` as their prototype, not as a key): checked on
 * the message as sent, so that it is refused as invalid params, nothing recorded, not silently
 * run without it. The SDK answers anything that is not such a message (bad JSON included).
 */
function hiddenArgumentsProblem(body: Buffer): { id: unknown; message: string } | null {
  let message: unknown;
  try {
    message = JSON.parse(body.toString('utf8'));
  } catch {
    return null;
  }
  const m = message as { method?: unknown; id?: unknown; params?: { arguments?: unknown } } | null;
  if (m === null || typeof m !== 'object' || m.method !== 'tools/call') return null;
  const shape = checkJsonShape(m.params?.arguments);
  return shape ? { id: m.id ?? null, message: `arguments at ${shape.path}: ${shape.problem}` } : null;
}

/**
 * A JSON array at the top level (after optional whitespace). A leading UTF-8 byte order mark is
 * skipped as the SDK's TextDecoder drops it: otherwise a batch behind one would be run.
 */
function isBatch(body: Buffer): boolean {
  const bom = body[0] === 0xef && body[1] === 0xbb && body[2] === 0xbf;
  for (const byte of bom ? body.subarray(3) : body) {
    if (byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d) continue;
    return byte === 0x5b; // '['
  }
  return false;
}
