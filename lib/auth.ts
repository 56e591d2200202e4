import { createSecretKey, type KeyObject } from 'node:crypto';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeJwt,
  errors,
  jwtVerify,
  SignJWT,
  type FlattenedJWSInput,
  type JWTHeaderParameters,
  type JWTPayload,
} from 'jose';
import { TokenClaims, type Principal } from '../contracts/index.ts';
import type { UserTokenConfig } from './config.ts';

/**
 * User tokens are JWTs: subject = user id, `roles`, `iat`, `exp`. They are HS256 under JWT_SECRET
 * (development, scripts) or RS256 / ES256 / EdDSA from an identity provider whose key set is
 * published at JWKS_URL (docs/decisions/0011-user-tokens-jwks.md). Verification errors never carry
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
  /**
   * Verifies a token as it was when issued: signature, issuer, audience, lifetime, claims, but not
   * whether it has expired since. Only for a request recorded while its token was valid that
   * outlives it (a call waiting for approval: docs/approval.md); never to admit anything new.
   */
  verifyAsIssued?(token: string): Promise<Principal>;
}

export interface TokenVerifierOptions {
  /** HS256 key (JWT_SECRET). */
  secret?: string | undefined;
  /** The identity provider's key set (JWKS_URL), for RS256, ES256 and EdDSA tokens. */
  jwksUrl?: string | URL | undefined;
  /** Required `iss`, when set (JWT_ISSUER). Applies to every token, whatever its algorithm. */
  issuer?: string | undefined;
  /** Required `aud`, when set (JWT_AUDIENCE). */
  audience?: string | undefined;
  /** Longest `exp - iat` accepted (JWT_MAX_LIFETIME_S); tokens without `iat` are refused. */
  maxLifetimeS: number;
  /** Clock skew allowed on `exp`, `nbf` and `iat` (JWT_CLOCK_TOLERANCE_S). */
  clockToleranceS: number;
  /** How the key set is fetched; the defaults suit production, tests shorten them. */
  jwks?: JwksTiming;
}

export interface JwksTiming {
  /** A fetch of the key set gives up after this long. Default 5 s. */
  timeoutMs?: number;
  /** An unknown `kid` refetches the set at most this often. Default 30 s. */
  cooldownMs?: number;
  /** The set is refetched when older than this (on the next new token). Default 10 min. */
  cacheMaxAgeMs?: number;
}

const HMAC_ALGORITHMS = ['HS256'];
const PUBLIC_KEY_ALGORITHMS = ['RS256', 'ES256', 'EdDSA'];

/** Tokens verified before, per verifier: an agent sends the same token with many requests. */
const VERIFIED_CACHE_SIZE = 10_000;

/** The verifier a service builds from its configuration (UserTokenEnv). */
export function tokenVerifierFromConfig(config: UserTokenConfig): TokenVerifier {
  return createTokenVerifier({
    secret: config.JWT_SECRET,
    jwksUrl: config.JWKS_URL,
    issuer: config.JWT_ISSUER,
    audience: config.JWT_AUDIENCE,
    maxLifetimeS: config.JWT_MAX_LIFETIME_S,
    clockToleranceS: config.JWT_CLOCK_TOLERANCE_S,
  });
}

/**
 * The token of an `Authorization` value: `Bearer <token>`, the scheme in any case (RFC 7235), or a
 * bare token (the notifier's `auth` message carries one). Another scheme is refused by name.
 */
export function tokenOf(value: string): string {
  const m = /^([A-Za-z][\w.+-]*)\s+(\S+)\s*$/.exec(value);
  if (!m) return value.trim();
  if (m[1]!.toLowerCase() !== 'bearer') {
    throw new AuthError(
      `the ${m[1]!.slice(0, 20)} scheme is not accepted: send Authorization: Bearer <token>`,
      'invalid',
    );
  }
  return m[2]!;
}

export function createTokenVerifier(options: TokenVerifierOptions): TokenVerifier {
  const keys = tokenKeys(options);
  // The remembered tokens expire as jose would judge them: with the same tolerance.
  const toleranceMs = options.clockToleranceS * 1000;
  // The exact token text that verified, and what it said; its expiry is checked on every use.
  const verified = new Map<string, Principal & { expiresAt: number }>();
  return {
    async verify(token) {
      if (!token) throw new AuthError('no token', 'missing');
      const raw = tokenOf(token);
      const known = verified.get(raw);
      if (known) {
        if (known.expiresAt + toleranceMs > Date.now()) return known;
        verified.delete(raw);
        throw new AuthError('token expired', 'expired');
      }
      // Shared by every request with this token: frozen, so that none can change it for the others.
      const principal = Object.freeze(await verifyNew(raw));
      verified.set(raw, principal);
      if (verified.size > VERIFIED_CACHE_SIZE) verified.delete(verified.keys().next().value!);
      return principal;
    },
    async verifyAsIssued(token) {
      const raw = tokenOf(token);
      let iat: unknown;
      try {
        iat = decodeJwt(raw).iat;
      } catch (e) {
        throw asAuthError(e);
      }
      if (typeof iat !== 'number') throw new AuthError('token has no iat', 'invalid');
      // Judged at its issue time (the signature decides whether iat is true).
      return verifyNew(raw, new Date(iat * 1000));
    },
  };

  async function verifyNew(raw: string, at?: Date): Promise<Principal & { expiresAt: number }> {
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(raw, keys.resolve, {
        algorithms: keys.algorithms,
        requiredClaims: ['sub', 'exp', 'iat'],
        ...(options.issuer !== undefined ? { issuer: options.issuer } : {}),
        ...(options.audience !== undefined ? { audience: options.audience } : {}),
        // Also refuses an `iat` in the future (beyond the tolerance).
        maxTokenAge: options.maxLifetimeS,
        clockTolerance: options.clockToleranceS,
        ...(at ? { currentDate: at } : {}),
      }));
    } catch (e) {
      throw asAuthError(e);
    }
    // A token the provider made to live longer than we accept is refused even while it is young:
    // the maximum bounds how long a stolen token stays useful.
    if (payload.exp! - payload.iat! > options.maxLifetimeS) {
      throw new AuthError(
        `token lifetime (exp - iat) is over the maximum of ${options.maxLifetimeS} s`,
        'invalid',
      );
    }
    const claims = TokenClaims.safeParse(payload);
    if (!claims.success) throw new AuthError('token claims are invalid (sub, roles)', 'invalid');
    return { userId: claims.data.sub, roles: claims.data.roles, expiresAt: claims.data.exp * 1000 };
  }
}

function asAuthError(e: unknown): AuthError {
  if (e instanceof AuthError) return e;
  if (e instanceof errors.JWTExpired) return new AuthError('token expired', 'expired');
  if (e instanceof errors.JWTClaimValidationFailed) {
    return new AuthError(`token rejected (${e.code}: ${e.claim} ${e.reason})`, 'invalid');
  }
  return new AuthError(`token rejected (${(e as { code?: string }).code ?? 'invalid'})`, 'invalid');
}

type KeyResolver = (header: JWTHeaderParameters, token: FlattenedJWSInput) => Promise<KeyObject | CryptoKey>;

/**
 * The algorithms accepted and the key for each token: HS256 with the secret, the others from the
 * key set. A token's algorithm picks its key, and the allow-list keeps an HS256 token from ever
 * being checked against a public key (algorithm confusion).
 */
function tokenKeys(options: TokenVerifierOptions): { algorithms: string[]; resolve: KeyResolver } {
  if (options.secret === undefined && options.jwksUrl === undefined) {
    throw new TypeError('createTokenVerifier needs a secret, a JWKS URL or both');
  }
  // One KeyObject for the process: jose would otherwise import the raw secret on every verify.
  const secret = options.secret === undefined ? null : createSecretKey(Buffer.from(options.secret, 'utf8'));
  const keySet = options.jwksUrl === undefined ? null : remoteKeySet(new URL(options.jwksUrl), options.jwks);
  return {
    algorithms: [...(secret ? HMAC_ALGORITHMS : []), ...(keySet ? PUBLIC_KEY_ALGORITHMS : [])],
    async resolve(header, token) {
      if (HMAC_ALGORITHMS.includes(header.alg)) return secret!;
      return keySet!(header, token);
    },
  };
}

/**
 * jose's remote key set (cached, refetched when older than the cache age or on an unknown `kid`,
 * at most once per cooldown), made to outlive its endpoint: when a fetch fails, the keys fetched
 * before still verify, and for a cooldown they are used without waiting on the endpoint again.
 * A key that is not in the set is refused with a reason that says whether the set was current.
 */
function remoteKeySet(url: URL, timing: JwksTiming = {}): KeyResolver {
  const cooldownMs = timing.cooldownMs ?? 30_000;
  const remote = createRemoteJWKSet(url, {
    timeoutDuration: timing.timeoutMs ?? 5_000,
    cooldownDuration: cooldownMs,
    cacheMaxAge: timing.cacheMaxAgeMs ?? 600_000,
  });
  let failedAt = -Infinity;
  let failure = '';
  // The keys fetched before the last failed fetch (null when none ever was).
  let lastFetched: ReturnType<typeof createLocalJWKSet> | null = null;

  const fromLastFetched = async (header: JWTHeaderParameters, token: FlattenedJWSInput) => {
    if (!lastFetched)
      throw new AuthError(`the key set at JWKS_URL could not be fetched (${failure})`, 'invalid');
    try {
      return await lastFetched(header, token);
    } catch (e) {
      if (!(e instanceof errors.JWKSNoMatchingKey)) throw e;
      throw new AuthError(
        `token signed with an unknown key (kid ${kidOf(header)}); the key set at JWKS_URL could not be fetched (${failure})`,
        'invalid',
      );
    }
  };

  return async (header, token) => {
    if (Date.now() - failedAt < cooldownMs) return fromLastFetched(header, token);
    try {
      return await remote(header, token);
    } catch (e) {
      if (e instanceof errors.JWKSNoMatchingKey) {
        throw new AuthError(`token signed with an unknown key (kid ${kidOf(header)})`, 'invalid');
      }
      if (!isFetchFailure(e)) throw e;
      failedAt = Date.now();
      failure = describeFetchFailure(e);
      const jwks = remote.jwks();
      lastFetched = jwks ? createLocalJWKSet(jwks) : null;
      return fromLastFetched(header, token);
    }
  };
}

/** The token's `kid` for a message: it comes from the sender, so it is cut short and made printable. */
const kidOf = (header: JWTHeaderParameters): string =>
  header.kid === undefined ? 'none' : header.kid.slice(0, 64).replace(/[^\x20-\x7e]/g, '?');

/** What else the key set can throw once fetched: a key it holds but cannot use for this token. */
const KEY_ERRORS = new Set(['ERR_JWKS_MULTIPLE_MATCHING_KEYS', 'ERR_JOSE_NOT_SUPPORTED', 'ERR_JWK_INVALID']);
const isFetchFailure = (e: unknown): boolean => !KEY_ERRORS.has((e as { code?: string }).code ?? '');

function describeFetchFailure(e: unknown): string {
  const err = e as Error & { code?: string; cause?: { code?: string; message?: string } };
  if (err instanceof errors.JWKSTimeout) return 'timed out';
  return err.cause?.code ?? err.cause?.message ?? err.message;
}

/** Issues an HS256 token (with `iat`): for tests, scripts and the demo page. */
export async function signToken(
  secret: string,
  claims: { sub: string; roles?: string[]; iss?: string; aud?: string },
  expiresIn: string | number = '1h',
): Promise<string> {
  const jwt = new SignJWT({ roles: claims.roles ?? [] })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(claims.sub)
    .setIssuedAt()
    .setExpirationTime(expiresIn);
  if (claims.iss !== undefined) jwt.setIssuer(claims.iss);
  if (claims.aud !== undefined) jwt.setAudience(claims.aud);
  return jwt.sign(new TextEncoder().encode(secret));
}
