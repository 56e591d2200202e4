import t from 'tap';
import { AuthError, createTokenVerifier, signToken } from './auth.ts';

const SECRET = 'auth-unit-test-secret-that-is-long-enough-0123';

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
  const verifier = createTokenVerifier(SECRET);
  const token = await signToken(SECRET, { sub: 'ada', roles: ['user', 'auditor'] }, '1h');
  const first = await verifier.verify(token);
  t.match(first, { userId: 'ada', roles: ['user', 'auditor'] });
  for (const form of [token, `Bearer ${token}`]) {
    t.equal(await verifier.verify(form), first, 'the principal remembered, not verified again');
  }
  t.ok(Object.isFrozen(first), 'frozen: no request can change it for the others');
  const another = createTokenVerifier(SECRET);
  t.not(await another.verify(token), first, 'each verifier remembers its own');
});

t.test('a remembered token is refused once it expires', async (t) => {
  const verifier = createTokenVerifier(SECRET);
  const token = await signToken(SECRET, { sub: 'bo' }, Math.floor(Date.now() / 1000) + 2);
  t.equal((await verifier.verify(token)).userId, 'bo');
  const { expiresAt = 0 } = await verifier.verify(token);
  await new Promise((r) => setTimeout(r, Math.max(0, expiresAt - Date.now()) + 50));
  t.equal(await reasonOf(verifier.verify(token)), 'expired');
  t.equal(await reasonOf(verifier.verify(token)), 'expired', 'and stays refused');
});

t.test('forged, tampered and missing tokens are refused, also after a good one', async (t) => {
  const verifier = createTokenVerifier(SECRET);
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
