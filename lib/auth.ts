import { createSecretKey } from 'node:crypto';
import { errors, jwtVerify, SignJWT } from 'jose';
import { TokenClaims, type Principal } from '../contracts/index.ts';

/**
 * User tokens are HS256 JWTs: subject = user id, `roles`, `exp`. Verification errors never carry
 * the token itself, so they are safe to log.
 */
export class AuthError extends Error {
  constructor(
    message: string,
    readonly reason: 'missing' | 'expired' | 'invalid',
  ) {
    super(message);
    this.name = 'AuthError';
  }
}

export interface TokenVerifier {
  verify(token: string | undefined | null): Promise<Principal>;
}

/** Tokens verified before, per verifier: an agent sends the same token with many requests. */
const VERIFIED_CACHE_SIZE = 10_000;

export function createTokenVerifier(secret: string): TokenVerifier {
  // One KeyObject for the process: jose would otherwise import the raw secret on every verify.
  const key = createSecretKey(Buffer.from(secret, 'utf8'));
  // The exact token text that verified, and what it said; its expiry is checked on every use.
  const verified = new Map<string, Principal & { expiresAt: number }>();
  return {
    async verify(token) {
      if (!token) throw new AuthError('no token', 'missing');
      const raw = token.startsWith('Bearer ') ? token.slice(7) : token;
      const known = verified.get(raw);
      if (known) {
        if (known.expiresAt > Date.now()) return known;
        verified.delete(raw);
        throw new AuthError('token expired', 'expired');
      }
      // Shared by every request with this token: frozen, so that none can change it for the others.
      const principal = Object.freeze(await verifyNew(raw));
      verified.set(raw, principal);
      if (verified.size > VERIFIED_CACHE_SIZE) verified.delete(verified.keys().next().value!);
      return principal;
    },
  };

  async function verifyNew(raw: string): Promise<Principal & { expiresAt: number }> {
    let payload: unknown;
    try {
      ({ payload } = await jwtVerify(raw, key, { algorithms: ['HS256'], requiredClaims: ['sub', 'exp'] }));
    } catch (e) {
      if (e instanceof errors.JWTExpired) throw new AuthError('token expired', 'expired');
      throw new AuthError(`token rejected (${(e as { code?: string }).code ?? 'invalid'})`, 'invalid');
    }
    const claims = TokenClaims.safeParse(payload);
    if (!claims.success) throw new AuthError('token claims are invalid (sub, roles)', 'invalid');
    return { userId: claims.data.sub, roles: claims.data.roles, expiresAt: claims.data.exp * 1000 };
  }
}

/** Issues a token: for tests, scripts and the demo page. */
export async function signToken(
  secret: string,
  claims: { sub: string; roles?: string[] },
  expiresIn: string | number = '1h',
): Promise<string> {
  return new SignJWT({ roles: claims.roles ?? [] })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(claims.sub)
    .setIssuedAt()
    .setExpirationTime(expiresIn)
    .sign(new TextEncoder().encode(secret));
}
