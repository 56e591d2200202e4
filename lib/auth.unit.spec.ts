import { randomBytes } from 'node:crypto';
import { SignJWT } from 'jose';
import t from 'tap';
import { AuthError, createTokenVerifier, signToken, type TokenVerifierOptions } from './auth.ts';

const SECRET = randomBytes(32).toString('hex');
const hs256 = (more: Partial<TokenVerifierOptions> = {}) =>
  createTokenVerifier({ secret: SECRET, maxLifetimeS: 86_400, clockToleranceS: 5, ...more });

/** Why verification refused the token (or 'accepted'). */
async function reasonOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'accepted';
  } catch (e) {
    return e instanceof AuthError ? e.reason : `not an AuthError: ${String(e)}`;
  }
}

t.test('a token verifies to its subject and roles, the second time from memory as well', async (t) => {
  const verifier = hs256();
  const token = await signToken(SECRET, { sub: 'ada', roles: ['user', 'auditor'] }, '1h');
  const first = await verifier.verify(token);
  t.match(first, { userId: 'ada', roles: ['user', 'auditor'] });
  for (const form of [token, `Bearer ${token}`]) {
    t.equal(await verifier.verify(form), first, 'the principal remembered, not verified again');
  }
  t.ok(Object.isFrozen(first), 'frozen: no request can change it for the others');
  const another = hs256();
  t.not(await another.verify(token), first, 'each verifier remembers its own');
});

t.test(
  'the Authorization scheme: Bearer in any case, or none; another scheme is refused by name',
  async (t) => {
    const verifier = hs256();
    const token = await signToken(SECRET, { sub: 'ada' }, '1h');
    for (const form of [`Bearer ${token}`, `bearer ${token}`, `BEARER  ${token}`, token]) {
      t.equal((await verifier.verify(form)).userId, 'ada', JSON.stringify(form.slice(0, 8)));
    }
    await t.rejects(verifier.verify(`Basic ${token}`), {
      reason: 'invalid',
      message: /Basic scheme is not accepted/,
    });
    t.equal(await reasonOf(verifier.verifyAsIssued!(`bearer ${token}`).then(() => 'ok')), 'accepted');
  },
);

t.test('a remembered token is refused once it expires', async (t) => {
  const verifier = hs256({ clockToleranceS: 0 });
  const token = await signToken(SECRET, { sub: 'bo' }, Math.floor(Date.now() / 1000) + 2);
  t.equal((await verifier.verify(token)).userId, 'bo');
  const { expiresAt = 0 } = await verifier.verify(token);
  await new Promise((r) => setTimeout(r, Math.max(0, expiresAt - Date.now()) + 50));
  t.equal(await reasonOf(verifier.verify(token)), 'expired');
  t.equal(await reasonOf(verifier.verify(token)), 'expired', 'and stays refused');
});

t.test('a token remembered by one verifier is refused by a verifier of another key', async (t) => {
  const token = await signToken(SECRET, { sub: 'di', roles: ['user'] });
  t.equal((await hs256().verify(token)).userId, 'di');
  const otherKey = createTokenVerifier({
    secret: randomBytes(32).toString('hex'),
    maxLifetimeS: 86_400,
    clockToleranceS: 5,
  });
  t.equal(await reasonOf(otherKey.verify(token)), 'invalid', 'memory is per verifier, not per process');
  t.equal(await reasonOf(otherKey.verify(token)), 'invalid', 'and a refusal is not remembered as a pass');
});

t.test('forged, tampered and missing tokens are refused, also after a good one', async (t) => {
  const verifier = hs256();
  const good = await signToken(SECRET, { sub: 'cy', roles: ['user'] });
  await verifier.verify(good);
  const forged = await signToken('another-secret-that-is-long-enough-0123456789', { sub: 'cy' });
  const [header, , signature] = good.split('.');
  const payload = Buffer.from(JSON.stringify({ sub: 'cy', roles: ['admin'], exp: 4102444800 })).toString(
    'base64url',
  );
  t.equal(await reasonOf(verifier.verify(forged)), 'invalid', 'signed with another secret');
  t.equal(await reasonOf(verifier.verify(`${header}.${payload}.${signature}`)), 'invalid', 'tampered');
  t.equal(await reasonOf(verifier.verify(undefined)), 'missing');
  t.equal(await reasonOf(verifier.verify('')), 'missing');
});

/** Why verification refused the token, and what it said. */
async function refusal(p: Promise<unknown>): Promise<{ reason: string; message: string }> {
  try {
    await p;
    return { reason: 'accepted', message: '' };
  } catch (e) {
    if (!(e instanceof AuthError)) throw e;
    return { reason: e.reason, message: e.message };
  }
}

const now = () => Math.floor(Date.now() / 1000);
const rawToken = (claims: Record<string, unknown>) =>
  new SignJWT({ roles: ['user'], ...claims }).setProtectedHeader({ alg: 'HS256' }).sign(Buffer.from(SECRET));

t.test('lifetime: iat is required and exp - iat may not exceed the maximum', async (t) => {
  const verifier = hs256({ maxLifetimeS: 3_600 });
  t.equal(
    (await verifier.verify(await signToken(SECRET, { sub: 'di' }, '1h'))).userId,
    'di',
    'exactly the maximum',
  );
  t.match(await refusal(verifier.verify(await signToken(SECRET, { sub: 'di' }, '2h'))), {
    reason: 'invalid',
    message: /lifetime .* over the maximum of 3600 s/,
  });
  t.match(await refusal(verifier.verify(await rawToken({ sub: 'di', exp: now() + 60 }))), {
    reason: 'invalid',
    message: /iat/,
  });
  t.match(
    await refusal(verifier.verify(await rawToken({ sub: 'di', iat: now() + 600, exp: now() + 900 }))),
    { reason: 'invalid', message: /iat/ },
    'issued in the future (beyond the tolerance)',
  );
});

t.test('the clock tolerance lets a just-expired token through, and no more', async (t) => {
  const verifier = hs256({ clockToleranceS: 30 });
  const justExpired = await rawToken({ sub: 'ed', iat: now() - 100, exp: now() - 5 });
  t.equal((await verifier.verify(justExpired)).userId, 'ed');
  const expired = await rawToken({ sub: 'ed', iat: now() - 100, exp: now() - 60 });
  t.equal((await refusal(verifier.verify(expired))).reason, 'expired');
});

t.test('issuer and audience are required when configured, also of HS256 tokens', async (t) => {
  const verifier = hs256({ issuer: 'https://id.example', audience: 'toolbus' });
  const good = await signToken(SECRET, { sub: 'fi', iss: 'https://id.example', aud: 'toolbus' });
  t.equal((await verifier.verify(good)).userId, 'fi');
  for (const [what, claims, claim] of [
    ['no iss', { aud: 'toolbus' }, 'iss'],
    ['another iss', { iss: 'https://evil.example', aud: 'toolbus' }, 'iss'],
    ['no aud', { iss: 'https://id.example' }, 'aud'],
    ['another aud', { iss: 'https://id.example', aud: 'other-app' }, 'aud'],
  ] as const) {
    const token = await signToken(SECRET, { sub: 'fi', ...claims });
    t.match(await refusal(verifier.verify(token)), { reason: 'invalid', message: new RegExp(claim) }, what);
  }
});

t.test('a verifier needs a secret or a key set', async (t) => {
  t.throws(() => createTokenVerifier({ maxLifetimeS: 60, clockToleranceS: 0 }), TypeError);
});

t.test(
  'verifyAsIssued: an expired token as it was when issued, and nothing a forger could make',
  async (t) => {
    const verifier = hs256({ maxLifetimeS: 3_600 });
    const expired = await rawToken({ sub: 'ed', iat: now() - 7_200, exp: now() - 3_600 });
    t.equal((await refusal(verifier.verify(expired))).reason, 'expired', 'verify refuses it');
    t.match(
      await verifier.verifyAsIssued!(expired),
      { userId: 'ed', roles: ['user'] },
      'verifyAsIssued takes it',
    );
    const forged = await new SignJWT({ sub: 'ed', roles: ['admin'], iat: now() - 7_200, exp: now() - 3_600 })
      .setProtectedHeader({ alg: 'HS256' })
      .sign(Buffer.from('another secret of thirty-two bytes!'));
    t.equal((await refusal(verifier.verifyAsIssued!(forged))).reason, 'invalid', 'not a forged one');
    const tooLong = await rawToken({ sub: 'ed', iat: now() - 7_200, exp: now() + 3_600 });
    t.equal(
      (await refusal(verifier.verifyAsIssued!(tooLong))).reason,
      'invalid',
      'nor one that lived too long',
    );
    t.equal((await refusal(verifier.verifyAsIssued!('not.a.jwt'))).reason, 'invalid', 'nor garbage');
  },
);
