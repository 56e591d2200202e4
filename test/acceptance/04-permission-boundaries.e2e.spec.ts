/**
 * Scenario 4 — permission boundaries.
 *
 * Proves, against the running stack: a user without the role a tool requires is refused
 * (FORBIDDEN) and the tool does not run; the refusal is audited — recorded in that user's stream
 * as ToolRequested + ToolFailed{FORBIDDEN} with no ToolExecuting, notified to their socket, and
 * shown by the projector as a refused execution; a token for one user cannot act for another
 * (another user's subject, or another `userId` in the body: FORBIDDEN, recorded in the caller's
 * own stream, the victim's stream untouched); a missing, forged or expired token is refused
 * (UNAUTHENTICATED) and nothing is recorded for the user it names; the HTTP API draws the same
 * lines (401, 403); a user with the role runs the tool.
 */
import { jetstream } from '@nats-io/jetstream';
import t from 'tap';
import { userStream } from '../../contracts/index.ts';
import { signToken } from '../../lib/auth.ts';
import { submitRequest } from '../../lib/clients/agent.ts';
import { subscribe } from '../../services/notifier/test-client.ts';
import { startTestStack } from '../support/stack.ts';
import {
  dbPool,
  eventsOf,
  http,
  newUserId,
  projectorCaughtUp,
  terminal,
  typesOf,
  userEvents,
} from './support.ts';

const s = await startTestStack(t);
const pool = dbPool(t, s);
const js = jetstream(s.nc);

const userId = newUserId('plain');
const token = await s.token(userId, ['user']);
const socket = await subscribe(s.url('notifier'), token);
t.teardown(() => socket.ws.close());

t.test('a user without the role is refused and the refusal is audited', async (t) => {
  const answer = terminal(
    await s.agent.execute('admin_runtime_info', {}, { token, requestId: 'peek-at-host' }),
  );
  t.equal(answer.status, 'failed', 'refused');
  t.equal(answer.status === 'failed' ? answer.error.code : null, 'FORBIDDEN', 'FORBIDDEN');
  t.notOk(JSON.stringify(answer).includes('hostname'), 'no host details leak in the refusal');
  const stored = eventsOf(await userEvents(s.store, userId), answer.executionId!);
  t.same(typesOf(stored), ['ToolRequested', 'ToolFailed'], 'recorded as requested + failed, never executing');
  const failed = stored[1]!.event;
  t.equal(
    failed.type === 'ToolFailed' ? failed.data.error.code : null,
    'FORBIDDEN',
    'the record says FORBIDDEN',
  );
  t.equal(
    stored[0]!.event.type === 'ToolRequested' ? stored[0]!.event.data.tool : null,
    'admin_runtime_info',
    'and names the tool asked for',
  );
  t.equal(stored[0]!.event.metadata.requestId, 'peek-at-host', 'and the request id');

  await socket.waitFor('the refusal notification', () =>
    socket.events().some((n) => n.name === 'tool_failed' && n.event.id === failed.id),
  );
  t.pass('the user socket was told');

  await projectorCaughtUp(s, pool);
  const row = await http<{ status: string; error: { code: string } | null; startedAt: string | null }>(
    `${s.url('projector')}/executions/${answer.executionId}`,
    { token },
  );
  t.equal(row.body.status, 'failed', 'the read model shows it failed');
  t.equal(row.body.error?.code, 'FORBIDDEN', 'with FORBIDDEN');
  t.equal(row.body.startedAt, null, 'and that it never started');
  const activity = await http<{ refused: number }>(`${s.url('projector')}/users/${userId}/activity`, {
    token,
  });
  t.equal(activity.body.refused, 1, "the user's activity counts one refusal");
  const admin = await s.token(newUserId('auditor'), ['admin']);
  const adminView = await http<{ items: Array<{ executionId: string; error: { code: string } | null }> }>(
    `${s.url('projector')}/executions?userId=${userId}&status=failed`,
    { token: admin },
  );
  t.ok(
    adminView.body.items.some((i) => i.executionId === answer.executionId && i.error?.code === 'FORBIDDEN'),
    'an admin sees the refused attempt in the audit view',
  );
});

t.test('a user with the role runs the same tool', async (t) => {
  const adminId = newUserId('operator');
  const answer = terminal(
    await s.agent.execute('admin_runtime_info', {}, { token: await s.token(adminId, ['admin']) }),
  );
  t.equal(answer.status, 'completed');
  const result = answer.status === 'completed' ? (answer.result as Record<string, unknown>) : {};
  t.equal(result['requestedBy'], adminId, 'the tool ran for the admin');
  t.type(result['hostname'], 'string');
});

t.test('a token for one user cannot act for another', async (t) => {
  const victim = newUserId('victim');
  const viaSubject = terminal(
    await submitRequest(s.nc, js, {
      token,
      userId: victim,
      requestId: 'cross-subject',
      body: { requestId: 'cross-subject', tool: 'noop', args: {} },
    }),
  );
  t.equal(
    viaSubject.status === 'failed' ? viaSubject.error.code : null,
    'FORBIDDEN',
    "publishing on another user's subject is FORBIDDEN",
  );

  const viaBody = terminal(
    await submitRequest(s.nc, js, {
      token,
      userId,
      requestId: 'cross-body',
      body: { requestId: 'cross-body', tool: 'noop', args: {}, userId: victim },
    }),
  );
  t.equal(
    viaBody.status === 'failed' ? viaBody.error.code : null,
    'FORBIDDEN',
    'naming another user in the body is FORBIDDEN',
  );

  t.same(await userEvents(s.store, victim), [], "nothing was written to the victim's stream");
  const own = await userEvents(s.store, userId);
  for (const a of [viaSubject, viaBody]) {
    t.same(
      typesOf(eventsOf(own, a.executionId!)),
      ['ToolRequested', 'ToolFailed'],
      "the attempt is audited in the caller's own stream",
    );
  }
});

t.test('missing, forged and expired tokens are refused and nothing is recorded', async (t) => {
  const named = newUserId('impersonated');
  const forged = await signToken('not-the-real-secret-0123456789abcdefghijklmnop', {
    sub: named,
    roles: ['admin'],
  });
  const expired = await s.token(named, ['user'], Math.floor(Date.now() / 1000) - 60);
  const noneAlg = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${Buffer.from(
    JSON.stringify({ sub: named, roles: ['admin'], exp: Math.floor(Date.now() / 1000) + 600 }),
  ).toString('base64url')}.`;
  for (const [what, bad] of [
    ['forged', forged],
    ['expired', expired],
    ['unsigned (alg none)', noneAlg],
  ] as const) {
    const answer = terminal(await s.agent.execute('noop', {}, { token: bad }));
    t.equal(
      answer.status === 'failed' ? answer.error.code : null,
      'UNAUTHENTICATED',
      `a ${what} token is UNAUTHENTICATED`,
    );
  }
  const noToken = terminal(
    await submitRequest(s.nc, js, {
      token: '',
      userId: named,
      requestId: 'no-token',
      body: { requestId: 'no-token', tool: 'noop', args: {} },
    }),
  );
  t.equal(
    noToken.status === 'failed' ? noToken.error.code : null,
    'UNAUTHENTICATED',
    'no token is UNAUTHENTICATED',
  );
  t.equal(
    await s.store.streamInfo(userStream(named)),
    null,
    'no stream exists for the user the bad tokens named',
  );
  t.notOk(s.logText().includes(forged) || s.logText().includes(noneAlg), 'the bad tokens are not logged');
});

t.test('the HTTP API draws the same lines', async (t) => {
  const url = `${s.url('dispatcher')}/executions`;
  const anon = await http(url, { method: 'POST', body: { tool: 'noop', args: {} } });
  t.equal(anon.status, 401, 'no token: 401');
  const forbidden = await http<{ status: string; error: { code: string } }>(url, {
    method: 'POST',
    token,
    body: { tool: 'admin_runtime_info', args: {} },
  });
  t.equal(forbidden.status, 403, 'missing role: 403');
  t.equal(forbidden.body.error.code, 'FORBIDDEN');
  const ok = await http<{ status: string }>(url, { method: 'POST', token, body: { tool: 'noop', args: {} } });
  t.equal(ok.status, 200, 'allowed: 200');
  t.equal(ok.body.status, 'completed');
  const adminOnly = await http(`${s.url('projector')}/projection`, { token });
  t.equal(adminOnly.status, 403, 'projection status is admin-only');
});
