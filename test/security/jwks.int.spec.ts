import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, UnsecuredJWT, type JWK } from 'jose';
import t from 'tap';
import { AuthError, createTokenVerifier, type TokenVerifierOptions } from '../../lib/auth.ts';
import { harness } from '../../services/dispatcher/test/harness.ts';

/**
 * User tokens from an identity provider: the test serves a key set (JWKS) over real HTTP and signs
 * tokens the way a provider would (RS256, ES256, EdDSA), then checks what the verifier accepts and
 * refuses, across a key rotation and with the provider down, and runs a tool with such a token.
 */
type Tap = Parameters<Parameters<typeof t.test>[0]>[0];
type Alg = 'RS256' | 'ES256' | 'EdDSA';

const ISSUER = 'https://id.test.example/';
const AUDIENCE = 'toolbus-test';

interface SigningKey {
  alg: Alg;
  kid: string;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  jwk: JWK;
}

async function signingKey(alg: Alg, kid: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  return { alg, kid, privateKey, publicKey, jwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

const now = () => Math.floor(Date.now() / 1000);
let serial = 0;

/** A token as the provider issues it; `claims` overrides the defaults (a fresh `sub` each time). */
function providerToken(
  key: Pick<SigningKey, 'alg' | 'kid' | 'privateKey'>,
  claims: { sub?: string; iss?: string; aud?: string; iat?: number; exp?: number; roles?: string[] } = {},
): Promise<string> {
  const iat = claims.iat ?? now();
  return new SignJWT({ roles: claims.roles ?? ['user'] })
    .setProtectedHeader({ alg: key.alg, kid: key.kid })
    .setSubject(claims.sub ?? `user-${++serial}`)
    .setIssuer(claims.iss ?? ISSUER)
    .setAudience(claims.aud ?? AUDIENCE)
    .setIssuedAt(iat)
    .setExpirationTime(claims.exp ?? iat + 600)
    .sign(key.privateKey);
}

/** The identity provider's key set endpoint: a real HTTP server on a free port. */
interface JwksServer {
  url: string;
  keys: JWK[];
  /** Requests for the key set so far. */
  fetches: number;
  stop(): Promise<void>;
}

async function serveJwks(t: Tap, keys: JWK[]): Promise<JwksServer> {
  const server: Server = createServer((req, res) => {
    if (req.url !== '/.well-known/jwks.json') {
      res.writeHead(404).end();
      return;
    }
    served.fetches++;
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: served.keys }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  let stopped = false;
  const served: JwksServer = {
    url: `http://127.0.0.1:${port}/.well-known/jwks.json`,
    keys,
    fetches: 0,
    async stop() {
      if (stopped) return;
      stopped = true;
      // Kept-alive connections too: the verifier's next fetch must find nobody listening.
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  t.teardown(() => served.stop());
  return served;
}

/** Why verification refused the token, and what it said ('accepted' when it did not). */
async function refusal(p: Promise<unknown>): Promise<{ reason: string; message: string }> {
  try {
    await p;
    return { reason: 'accepted', message: '' };
  } catch (e) {
    if (!(e instanceof AuthError)) throw e;
    return { reason: e.reason, message: e.message };
  }
}

const [rsa, ec, ed] = await Promise.all([
  signingKey('RS256', 'rsa-1'),
  signingKey('ES256', 'ec-1'),
  signingKey('EdDSA', 'ed-1'),
]);

function verifierFor(jwks: JwksServer, more: Partial<TokenVerifierOptions> = {}) {
  return createTokenVerifier({
    jwksUrl: jwks.url,
    issuer: ISSUER,
    audience: AUDIENCE,
    maxLifetimeS: 3_600,
    clockToleranceS: 5,
    // No cooldown: a test may rotate keys right after the first fetch.
    jwks: { cooldownMs: 0, timeoutMs: 2_000 },
    ...more,
  });
}

t.test('RS256, ES256 and EdDSA tokens from the key set verify to their subject and roles', async (t) => {
  const jwks = await serveJwks(t, [rsa.jwk, ec.jwk, ed.jwk]);
  const verifier = verifierFor(jwks);
  for (const key of [rsa, ec, ed]) {
    const token = await providerToken(key, { sub: `ada-${key.alg}`, roles: ['user', 'auditor'] });
    t.match(
      await verifier.verify(`Bearer ${token}`),
      { userId: `ada-${key.alg}`, roles: ['user', 'auditor'] },
      key.alg,
    );
  }
  t.equal(jwks.fetches, 1, 'the key set was fetched once and kept');
});

t.test(
  'refused: wrong iss, wrong aud, unknown kid, expired, over the maximum lifetime, alg tricks',
  async (t) => {
    const jwks = await serveJwks(t, [rsa.jwk, ec.jwk, ed.jwk]);
    const verifier = verifierFor(jwks);
    const stranger = await signingKey('RS256', 'not-in-the-set');
    const impostor = { ...(await signingKey('ES256', 'x')), kid: ec.kid };
    const pem = await exportSPKI(rsa.publicKey);
    const cases: Array<[string, Promise<string>, string, RegExp]> = [
      ['wrong iss', providerToken(rsa, { iss: 'https://evil.example/' }), 'invalid', /iss/],
      ['wrong aud', providerToken(rsa, { aud: 'another-app' }), 'invalid', /aud/],
      ['unknown kid', providerToken(stranger), 'invalid', /unknown key \(kid not-in-the-set\)/],
      [
        'a known kid, signed by another key',
        providerToken(impostor),
        'invalid',
        /SIGNATURE_VERIFICATION_FAILED/,
      ],
      ['expired', providerToken(ec, { iat: now() - 600, exp: now() - 60 }), 'expired', /expired/],
      [
        'over the maximum lifetime (2 h > 1 h), although fresh',
        providerToken(ed, { exp: now() + 7_200 }),
        'invalid',
        /lifetime .* over the maximum of 3600 s/,
      ],
      [
        'HS256 signed with the public key (algorithm confusion)',
        new SignJWT({ roles: ['admin'] })
          .setProtectedHeader({ alg: 'HS256', kid: rsa.kid })
          .setSubject('mallory')
          .setIssuer(ISSUER)
          .setAudience(AUDIENCE)
          .setIssuedAt()
          .setExpirationTime('10m')
          .sign(new TextEncoder().encode(pem)),
        'invalid',
        /ALG_NOT_ALLOWED/,
      ],
      [
        'alg none',
        Promise.resolve(
          new UnsecuredJWT({ roles: ['admin'] })
            .setSubject('mallory')
            .setIssuer(ISSUER)
            .setAudience(AUDIENCE)
            .setIssuedAt()
            .setExpirationTime('10m')
            .encode(),
        ),
        'invalid',
        /ALG_NOT_ALLOWED/,
      ],
    ];
    for (const [what, token, reason, message] of cases) {
      t.match(await refusal(verifier.verify(await token)), { reason, message }, what);
    }
    t.equal(
      (await verifier.verify(await providerToken(rsa, { sub: 'still-fine' }))).userId,
      'still-fine',
      'a good token still verifies after the refusals',
    );

    // With an HS256 secret configured as well, HS256 tokens are checked with the secret only.
    const both = verifierFor(jwks, { secret: 'an-hs256-secret-for-this-test-only-0123456789' });
    const confused = await new SignJWT({ roles: ['admin'] })
      .setProtectedHeader({ alg: 'HS256', kid: rsa.kid })
      .setSubject('mallory')
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setIssuedAt()
      .setExpirationTime('10m')
      .sign(new TextEncoder().encode(pem));
    t.match(
      await refusal(both.verify(confused)),
      { reason: 'invalid', message: /SIGNATURE_VERIFICATION_FAILED/ },
      'with a secret too: the public key is never an HMAC key',
    );
    t.equal(
      (await both.verify(await providerToken(ed, { sub: 'eve-ok' }))).userId,
      'eve-ok',
      'JWKS tokens too',
    );
  },
);

t.test('key rotation: a new kid in the served set verifies after a refetch', async (t) => {
  const jwks = await serveJwks(t, [rsa.jwk]);
  const verifier = verifierFor(jwks);
  t.equal((await verifier.verify(await providerToken(rsa))).roles.length, 1);
  const next = await signingKey('ES256', 'rsa-2-rotated');
  const early = await providerToken(next);
  t.match(
    await refusal(verifier.verify(early)),
    { reason: 'invalid', message: /unknown key/ },
    'not yet published',
  );
  jwks.keys = [rsa.jwk, next.jwk];
  const fetchesBefore = jwks.fetches;
  t.equal((await verifier.verify(await providerToken(next, { sub: 'rotated' }))).userId, 'rotated');
  t.ok(jwks.fetches > fetchesBefore, 'the unknown kid made the verifier fetch the set again');
  t.equal(
    (await verifier.verify(await providerToken(rsa, { sub: 'old-key' }))).userId,
    'old-key',
    'the old key too',
  );
});

t.test('the key set endpoint down: known keys still verify, unknown ones are refused clearly', async (t) => {
  const jwks = await serveJwks(t, [rsa.jwk, ed.jwk]);
  // The cache is always stale here, so every new token goes to the endpoint first.
  const verifier = verifierFor(jwks, { jwks: { cooldownMs: 0, cacheMaxAgeMs: 0, timeoutMs: 2_000 } });
  t.equal((await verifier.verify(await providerToken(rsa, { sub: 'before' }))).userId, 'before');
  await jwks.stop();

  t.equal(
    (await verifier.verify(await providerToken(rsa, { sub: 'during' }))).userId,
    'during',
    'RS256, known kid',
  );
  t.equal(
    (await verifier.verify(await providerToken(ed, { sub: 'during-ed' }))).userId,
    'during-ed',
    'EdDSA',
  );
  const unknown = await providerToken(await signingKey('ES256', 'brand-new'));
  t.match(await refusal(verifier.verify(unknown)), {
    reason: 'invalid',
    message: /unknown key \(kid brand-new\); the key set at JWKS_URL could not be fetched \(ECONNREFUSED\)/,
  });

  const neverFetched = verifierFor(jwks);
  t.match(
    await refusal(neverFetched.verify(await providerToken(rsa))),
    { reason: 'invalid', message: /the key set at JWKS_URL could not be fetched/ },
    'a verifier that never reached the endpoint accepts nothing',
  );
});

t.test('a token from the identity provider runs a tool through the dispatcher', async (t) => {
  const jwks = await serveJwks(t, [rsa.jwk, ec.jwk, ed.jwk]);
  // The key set only: an empty JWT_SECRET counts as unset.
  const h = await harness(t, {
    JWT_SECRET: '',
    JWKS_URL: jwks.url,
    JWT_ISSUER: ISSUER,
    JWT_AUDIENCE: AUDIENCE,
  });
  t.equal(h.config.JWT_SECRET, undefined);
  await h.start();
  const token = await providerToken(ec, { sub: 'idp-user' });
  const answer = await h.agent.execute('echo', { text: 'from the provider' }, { token, requestId: 'jwks-1' });
  t.match(answer, { status: 'completed', result: { text: 'from the provider' } });
  t.strictSame(
    (await h.events('idp-user')).map((e) => e.type),
    ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
    'recorded in the user stream named by the token subject',
  );

  const wrongAudience = await providerToken(ec, { sub: 'idp-user', aud: 'another-app' });
  t.match(
    await h.agent.execute('echo', { text: 'x' }, { token: wrongAudience, requestId: 'jwks-2' }),
    { status: 'failed', error: { code: 'UNAUTHENTICATED' } },
    'a token for another audience is refused',
  );
});
