import type { Principal } from '../../contracts/index.ts';
import { AuthError, signToken, type TokenVerifier } from '../../lib/auth.ts';
import type { Caller } from './server.ts';

/** Who a request to /mcp acts for, or why it is refused (401). */
export type Identified = { ok: true; caller: Caller } | { ok: false; error: AuthError };

export interface Identify {
  (authorization: string | undefined): Promise<Identified>;
}

/**
 * Identifies callers by their bearer token, verified as every Toolbus service verifies tokens
 * (issuer, audience, lifetime, key set). The token is kept to be forwarded: the dispatcher
 * verifies it again and records the call in that user's stream.
 */
export function bearerIdentify(verifier: TokenVerifier): Identify {
  return async (authorization) => {
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    const token = /^bearer\s+(\S+)\s*$/i.exec(authorization ?? '')?.[1];
    if (!token) return { ok: false, error: new AuthError('no bearer token', 'missing') };
    try {
      return { ok: true, caller: { principal: await verifier.verify(token), token } };
    } catch (e) {
      if (e instanceof AuthError) return { ok: false, error: e };
      throw e;
    }
  };
}

/** How long a test-mode token lives; a new one is signed when less than half of it is left. */
const TEST_TOKEN_LIFETIME_S = 3_600;

/**
 * TEST MODE (GATEWAY_TEST_PRINCIPAL, only with NODE_ENV=test): a request without a token acts as
 * the fixed development principal, with a token signed here under JWT_SECRET so that the
 * dispatcher verifies and records it as any other. A request with a token is still verified.
 */
export function testModeIdentify(
  bearer: Identify,
  principal: Principal,
  jwtSecret: string,
  /** JWT_ISSUER and JWT_AUDIENCE, when set: the dispatcher requires them. */
  claims: { iss?: string | undefined; aud?: string | undefined } = {},
): Identify {
  let current: { token: string; renewAt: number } | null = null;
  const token = async () => {
    if (!current || Date.now() >= current.renewAt) {
      current = {
        token: await signToken(
          jwtSecret,
          {
            sub: principal.userId,
            roles: [...principal.roles],
            ...(claims.iss !== undefined ? { iss: claims.iss } : {}),
            ...(claims.aud !== undefined ? { aud: claims.aud } : {}),
          },
          `${TEST_TOKEN_LIFETIME_S}s`,
        ),
        renewAt: Date.now() + (TEST_TOKEN_LIFETIME_S * 1000) / 2,
      };
    }
    return current.token;
  };
  return async (authorization) =>
    authorization ? bearer(authorization) : { ok: true, caller: { principal, token: await token() } };
}
