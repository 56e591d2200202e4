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
  // Worded as the dispatcher words them (lib/auth.ts), not all as "names no user".
  t.match(a, { error: { message: 'token rejected (not a JWT)' } });
  const none = await client.execute('noop', {}, { token: '', requestId: 'r-2' });
  t.match(none, { error: { message: 'no token' } });
  const noSub = `${Buffer.from('{"alg":"HS256"}').toString('base64url')}.${Buffer.from('{"roles":[]}').toString('base64url')}.sig`;
  const anonymous = await client.execute('noop', {}, { token: noSub, requestId: 'r-3' });
  t.match(anonymous, { error: { message: 'the token names no user (no valid sub claim)' } });
});

t.test(
  'cancel: execution ids and request ids are told apart; a token without a user is refused',
  async (t) => {
    const { executionIdFor } = await import('../../contracts/index.ts');
    const { randomUUID } = await import('node:crypto');
    const { looksLikeExecutionId, CancelRequest } = await import('./agent.ts');
    t.ok(looksLikeExecutionId(executionIdFor('alice', 'r-1')), 'an execution id');
    t.notOk(looksLikeExecutionId(randomUUID()), 'a random (v4) UUID, as the client makes request ids');
    t.notOk(looksLikeExecutionId('r-1'));
    t.ok(CancelRequest.safeParse({ executionId: executionIdFor('alice', 'r-1') }).success);
    t.ok(CancelRequest.safeParse({ requestId: 'r-1' }).success);
    t.notOk(CancelRequest.safeParse({ requestId: 'r-1', executionId: executionIdFor('a', 'b') }).success);
    t.notOk(CancelRequest.safeParse({ executionId: 'not-a-uuid' }).success);
    t.notOk(CancelRequest.safeParse({ requestId: 'has space' }).success);

    const client = createAgentClient({} as never, { js: {} as never });
    const r = await client.cancel('r-1', { token: 'nonsense' });
    t.match(r, {
      cancelled: false,
      status: 'refused',
      requestId: 'r-1',
      executionId: null,
      error: { code: 'UNAUTHENTICATED', message: 'token rejected (not a JWT)' },
    });
  },
);
