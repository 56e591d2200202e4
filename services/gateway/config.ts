import { z } from 'zod';
import { CommonEnv, intVar, requireTokenKey, UserTokenEnv } from '../../lib/config.ts';
import { UserId } from '../../contracts/index.ts';

const httpUrl = (what: string) => z.url({ protocol: /^https?$/, error: `must be an http(s) URL (${what})` });

/**
 * The gateway's environment: the common variables, the user-token ones (its tokens are the users'
 * own, verified as every service verifies them) and its own. docs/mcp.md describes each.
 */
const GatewayVariables = CommonEnv.extend({
  ...UserTokenEnv.shape,
  GATEWAY_PORT: CommonEnv.shape.DISPATCHER_PORT.default(8084),
  /**
   * The URL clients reach `/mcp` at, as they see it (behind a proxy it differs from HOST:PORT):
   * the `resource` of the protected-resource metadata and the base of its URL in 401 challenges.
   * Default `http://<HOST>:<GATEWAY_PORT>/mcp`.
   */
  GATEWAY_PUBLIC_URL: httpUrl('the public URL of /mcp').optional(),
  /**
   * The authorization server(s) the metadata names, comma-separated; default JWT_ISSUER. Clients
   * get their tokens there.
   */
  GATEWAY_AUTHORIZATION_SERVERS: z.string().optional(),
  /**
   * Browser origins allowed to call `/mcp`, comma-separated hostnames (no scheme, no port), as the
   * MCP SDK's `validateOriginHeader` takes them. Requests without an Origin header (non-browser
   * clients) always pass; any other origin gets 403 (DNS-rebinding defence). Default: localhost only.
   */
  GATEWAY_ALLOWED_ORIGINS: z.string().default('localhost,127.0.0.1,[::1]'),
  /**
   * Host header values allowed (hostnames, comma-separated): DNS-rebinding defence for a gateway
   * bound to a loopback address. Default: localhost names when HOST is loopback (and the
   * hostname of GATEWAY_PUBLIC_URL), otherwise no check.
   */
  GATEWAY_ALLOWED_HOSTS: z.string().optional(),
  /** Where the dispatcher's HTTP API is: the gateway reads the tool registry from its GET /tools. */
  GATEWAY_DISPATCHER_URL: httpUrl('the dispatcher HTTP API').default('http://127.0.0.1:8080'),
  /** How long a read registry is used before it is read again (a miss reads it at once). */
  GATEWAY_TOOLS_TTL_MS: intVar(5_000, 0, 3_600_000),
  /** How long a `tools/call` waits for its terminal answer before the call fails (the execution goes on). */
  GATEWAY_CALL_TIMEOUT_MS: intVar(10 * 60_000 + 30_000, 1_000, 24 * 3_600_000),
  /**
   * A tool whose manifest `timeoutMs` is at least this is long-running: listed with
   * `execution.taskSupport: "optional"` and callable as a task (2025-11-25 revision).
   */
  GATEWAY_TASK_MIN_TIMEOUT_MS: intVar(60_000, 1, 24 * 3_600_000),
  /**
   * Calls one user may have waiting on this gateway at once (`tools/call`s awaiting their answer,
   * `tasks/result`s); the next is refused at once as OVERLOADED (docs/mcp.md, "Configuration").
   */
  GATEWAY_MAX_WAITS_PER_USER: intVar(64, 1, 100_000),
  /** Largest body `/mcp` reads; beyond, 413 before anything is parsed. */
  GATEWAY_MAX_BODY_BYTES: intVar(1024 * 1024, 1024, 64 * 1024 * 1024),
  /**
   * TEST MODE for the MCP conformance suite, which sends no token: requests without a token act
   * as this user (roles: GATEWAY_TEST_PRINCIPAL_ROLES). Refused unless NODE_ENV=test, so a normal
   * start (development, production) can never run it; see docs/mcp.md.
   */
  GATEWAY_TEST_PRINCIPAL: UserId.optional(),
  GATEWAY_TEST_PRINCIPAL_ROLES: z.string().default('user'),
});

export const GatewayEnv = requireTokenKey(GatewayVariables).superRefine((c, ctx) => {
  // MCP's authorization asks a resource server to take only tokens issued for it: with an identity
  // provider's keys, a token for any other resource of that provider would otherwise do.
  if (c.JWKS_URL !== undefined && c.JWT_AUDIENCE === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['JWT_AUDIENCE'],
      message:
        'must be set with JWKS_URL: the gateway accepts only tokens issued for it (e.g. its public URL)',
    });
  }
  if (c.GATEWAY_TEST_PRINCIPAL === undefined) return;
  if (c.NODE_ENV !== 'test') {
    ctx.addIssue({
      code: 'custom',
      path: ['GATEWAY_TEST_PRINCIPAL'],
      message: `is the conformance test mode: refused unless NODE_ENV=test (it is ${c.NODE_ENV})`,
    });
  }
  if (c.JWT_SECRET === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['GATEWAY_TEST_PRINCIPAL'],
      message: "needs JWT_SECRET: the test principal's token is signed with it",
    });
  }
});
export type GatewayConfig = z.infer<typeof GatewayEnv>;

export const listOf = (value: string | undefined): string[] =>
  (value ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);

/** The Host header values /mcp accepts, or null for any (see GATEWAY_ALLOWED_HOSTS). */
export function allowedHostsOf(c: GatewayConfig, localhost: string[]): string[] | null {
  if (c.GATEWAY_ALLOWED_HOSTS !== undefined) return listOf(c.GATEWAY_ALLOWED_HOSTS);
  if (!LOOPBACK.has(c.HOST)) return null;
  return [...localhost, publicUrlOf(c).hostname];
}

/** The URL of `/mcp` as clients see it. */
export const publicUrlOf = (c: GatewayConfig): URL =>
  new URL(
    c.GATEWAY_PUBLIC_URL ?? `http://${c.HOST.includes(':') ? `[${c.HOST}]` : c.HOST}:${c.GATEWAY_PORT}/mcp`,
  );
