/**
 * Scenario 11 — admin permissions.
 *
 * Proves, against the running stack: an admin-only tool runs for an admin and is refused
 * (FORBIDDEN, audited) to plain users and to other privileged roles such as `auditor`; the
 * projector's admin views — every user's executions, filtering by user, another user's execution
 * and activity, the projection status — answer an admin and refuse everyone else (403, or 404 for
 * an execution so that its existence does not leak); on the notifier an admin may watch one
 * other user (with replay) or every user live (`*`), while a user asking for either is closed with
 * 4403 having received nothing.
 */
import t from 'tap';
import { CLOSE_CODES } from '../../contracts/index.ts';
import { openClient, subscribe, ticketFor } from '../../services/notifier/test-client.ts';
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
const projector = s.url('projector');
const notifier = s.url('notifier');

const alice = newUserId('alice');
const bob = newUserId('bob');
const root = newUserId('root');
const audit = newUserId('audit');
const tokens = {
  alice: await s.token(alice, ['user']),
  bob: await s.token(bob, ['user']),
  root: await s.token(root, ['admin']),
  audit: await s.token(audit, ['auditor']),
};

// Some history for everyone.
const aliceRun = terminal(await s.agent.execute('echo', { report: 'alice-q3' }, { token: tokens.alice }));
const bobRun = terminal(await s.agent.execute('echo', { report: 'bob-q3' }, { token: tokens.bob }));

t.test('the admin-only tool', async (t) => {
  const asAdmin = terminal(await s.agent.execute('admin_runtime_info', {}, { token: tokens.root }));
  t.equal(asAdmin.status, 'completed', 'runs for an admin');
  t.equal(
    asAdmin.status === 'completed' ? (asAdmin.result as { requestedBy: string }).requestedBy : null,
    root,
  );
  for (const [who, token, userId] of [
    ['a user', tokens.alice, alice],
    ['an auditor', tokens.audit, audit],
  ] as const) {
    const a = terminal(await s.agent.execute('admin_runtime_info', {}, { token }));
    t.equal(a.status === 'failed' ? a.error.code : null, 'FORBIDDEN', `is refused to ${who}`);
    t.same(
      typesOf(eventsOf(await userEvents(s.store, userId), a.executionId!)),
      ['ToolRequested', 'ToolFailed'],
      `and the attempt by ${who} is audited, without running`,
    );
  }
});

t.test("the projector's admin views", async (t) => {
  await projectorCaughtUp(s, pool);
  const all = await http<{ items: Array<{ userId: string }> }>(`${projector}/executions?limit=500`, {
    token: tokens.root,
  });
  t.equal(all.status, 200);
  const users = new Set(all.body.items.map((i) => i.userId));
  t.ok(
    users.has(alice) && users.has(bob) && users.has(root) && users.has(audit),
    'an admin lists every user’s executions',
  );
  const mine = await http<{ items: Array<{ userId: string }> }>(`${projector}/executions?limit=500`, {
    token: tokens.alice,
  });
  t.ok(
    mine.body.items.length > 0 && mine.body.items.every((i) => i.userId === alice),
    'a user lists only their own',
  );

  // The auditor (like the operator console's roles, docs/console.md) reads every user's executions,
  // but the projection's own status stays an admin's.
  const cases: Array<[string, string, number, number, number]> = [
    ['executions of another user', `/executions?userId=${bob}`, 200, 403, 200],
    ["another user's execution", `/executions/${bobRun.executionId}`, 200, 404, 200],
    ["another user's activity", `/users/${bob}/activity`, 200, 403, 200],
    ['the projection status', '/projection', 200, 403, 403],
  ];
  for (const [what, path, adminStatus, userStatus, auditorStatus] of cases) {
    const asAdmin = await http(`${projector}${path}`, { token: tokens.root });
    t.equal(asAdmin.status, adminStatus, `${what}: an admin gets ${adminStatus}`);
    const asUser = await http(`${projector}${path}`, { token: tokens.alice });
    t.equal(asUser.status, userStatus, `${what}: a user gets ${userStatus}`);
    t.notOk(JSON.stringify(asUser.body).includes('bob-q3'), `${what}: and nothing of bob`);
    const asAuditor = await http(`${projector}${path}`, { token: tokens.audit });
    t.equal(asAuditor.status, auditorStatus, `${what}: the auditor gets ${auditorStatus}`);
  }
  const filtered = await http<{ items: Array<{ userId: string; executionId: string }> }>(
    `${projector}/executions?userId=${bob}`,
    { token: tokens.root },
  );
  t.ok(
    filtered.body.items.every((i) => i.userId === bob) &&
      filtered.body.items.some((i) => i.executionId === bobRun.executionId),
    "an admin narrows to bob's executions",
  );
  const own = await http(`${projector}/executions/${aliceRun.executionId}`, { token: tokens.alice });
  t.equal(own.status, 200, 'a user reads their own execution');
});

t.test('the notifier: watching other users', async (t) => {
  // An admin watches bob (with his history), and everyone live.
  const watchBob = await subscribe(notifier, tokens.root, { userId: bob });
  t.teardown(() => watchBob.ws.close());
  t.ok(
    watchBob.events().length >= 3 && watchBob.events().every((e) => e.userId === bob),
    "an admin replays bob's history",
  );
  const watchAll = await subscribe(notifier, tokens.root, { userId: '*' });
  t.teardown(() => watchAll.ws.close());
  t.same(
    watchAll.received.find((n) => n.kind === 'ready'),
    { kind: 'ready', userId: '*', revision: null },
    'an admin watches every user',
  );

  // Users asking for someone else, or for everyone, are closed having received nothing.
  for (const [what, userId] of [
    ['bob', bob],
    ['everyone', '*'],
  ] as const) {
    for (const [who, token] of [
      ['alice', tokens.alice],
      ['the auditor', tokens.audit],
    ] as const) {
      const c = await openClient(notifier, { ticket: await ticketFor(notifier, token) });
      c.send({ type: 'subscribe', userId });
      const closed = await c.closed;
      t.equal(closed.code, CLOSE_CODES.forbidden, `${who} asking for ${what}: closed with 4403`);
      t.notOk(
        c.received.some((n) => n.kind === 'event' || n.kind === 'ready'),
        `${who} received no event`,
      );
    }
  }

  const a = terminal(await s.agent.execute('echo', { live: 'alice-live' }, { token: tokens.alice }));
  const b = terminal(await s.agent.execute('echo', { live: 'bob-live' }, { token: tokens.bob }));
  await watchAll.waitFor('both live executions', () =>
    [a, b].every((x) =>
      watchAll
        .events()
        .some((e) => e.name === 'tool_completed' && e.event.metadata.executionId === x.executionId),
    ),
  );
  t.pass("the admin's '*' socket sees alice's and bob's live events");
  await watchBob.waitFor("bob's live execution", () =>
    watchBob.events().some((e) => e.event.metadata.executionId === b.executionId),
  );
  t.notOk(
    watchBob.events().some((e) => e.event.metadata.executionId === a.executionId),
    "the socket watching bob gets none of alice's",
  );
  const revisions = watchBob.revisions();
  t.same(
    revisions,
    revisions.map((_, i) => i),
    "bob's events arrive in order, once",
  );
});
