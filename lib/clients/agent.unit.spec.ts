import t from 'tap';
import { signToken } from '../auth.ts';
import { createAgentClient, userIdOfToken } from './agent.ts';

t.test('the user id is read from the token without verifying it', async (t) => {
  const token = await signToken('k'.repeat(40), { sub: 'alice', roles: ['user'] });
  t.equal(userIdOfToken(token), 'alice');
  t.equal(userIdOfToken(`Bearer ${token}`), 'alice', 'with the Bearer prefix');
  const forged = await signToken('other-key-'.repeat(4), { sub: 'bob' });
  t.equal(userIdOfToken(forged), 'bob', 'whatever signs it: the dispatcher verifies');
  t.equal(userIdOfToken('not-a-jwt'), null);
  t.equal(userIdOfToken('a.b.c'), null, 'a payload that is not JSON');
  const bad = (payload: unknown) => `x.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.y`;
  t.equal(userIdOfToken(bad({ sub: 'a.b' })), null, 'a sub that is not a user id (it would spell a subject)');
  t.equal(userIdOfToken(bad({ sub: '>' })), null);
  t.equal(userIdOfToken(bad({ sub: 5 })), null);
  t.equal(userIdOfToken(bad({})), null);
});

t.test('a token without a user is refused before anything is sent', async (t) => {
  // No connection is touched on this path: the stand-ins would throw if it were.
  const client = createAgentClient({} as never, { js: {} as never });
  const a = await client.execute('noop', {}, { token: 'nonsense', requestId: 'r-1' });
  t.match(a, { status: 'failed', requestId: 'r-1', executionId: null, error: { code: 'UNAUTHENTICATED' } });
});
