import { connectionIdentity } from '../../lib/nats.ts';
import { headers } from '@nats-io/transport-node';
import { SignJWT } from 'jose';
import t from 'tap';
import { WebSocket } from 'ws';
import { executionIdFor, REQUEST_HEADERS, subjects } from '../../contracts/index.ts';
import { checkNothingLost } from './checker.ts';
import { FAULT_JWT_SECRET, httpGet, startFaultStack, type FaultStack } from './harness.ts';
import { Ledger, startLoad, type User } from './load.ts';
import { makeUsers, rawRequest } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Fault 10: tenant bypass attempts while three users work normally. An attacker with a valid
 * token of their own tries forged, expired and unsigned tokens, another user's subject, another
 * user's id in the body, another user's request ids (which must name the attacker's own
 * executions, never the victim's), another user's answers, another user's stream over WebSocket,
 * and another user's execution ids on both HTTP APIs. Every attempt is refused, and the checker
 * holds that no event crossed users: each stream holds only what its own user asked for, each
 * socket only its user's events.
 */

const sign = (sub: string, secret: string, exp: string | number, roles = ['user']) =>
  new SignJWT({ roles })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(exp)
    .sign(new TextEncoder().encode(secret));

const unsigned = (sub: string) =>
  `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${Buffer.from(
    JSON.stringify({ sub, roles: ['admin'], exp: Math.floor(Date.now() / 1000) + 3600 }),
  ).toString('base64url')}.`;

/** Opens a socket with a ticket for `token` and sends `message`; resolves the close code and any events seen. */
async function trySocket(fs: FaultStack, token: string, message: unknown, auth?: string) {
  let url = new URL('/ws', fs.url('notifier').replace(/^http/, 'ws'));
  if (!auth) {
    const res = await fetch(`${fs.url('notifier')}/tickets`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    });
    const { ticket } = (await res.json()) as { ticket: string };
    url = new URL(`${url.toString()}?ticket=${encodeURIComponent(ticket)}`);
  }
  const ws = new WebSocket(url);
  ws.on('error', () => undefined);
  const events: unknown[] = [];
  ws.on('message', (d) => {
    const n = JSON.parse((d as Buffer).toString()) as { kind: string };
    if (n.kind === 'event') events.push(n);
  });
  const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
  await new Promise((r) => ws.once('open', r));
  if (auth) ws.send(JSON.stringify({ type: 'auth', token: auth }));
  ws.send(JSON.stringify(message));
  const code = await Promise.race([closed, new Promise<null>((r) => setTimeout(() => r(null), 5_000))]);
  ws.terminate();
  return { code, events };
}

t.test('tenant bypass attempts under load: every one refused, zero events cross users', async (t) => {
  const fs = await startFaultStack(t);
  const victims = await makeUsers(fs, 'tv', 3);
  const [attacker] = await makeUsers(fs, 'tx', 1);
  const me: User = attacker!;
  const watchers = startWatchers(fs.url('notifier'), [...victims, me]);
  t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
  const ledger = new Ledger();
  const load = startLoad({ agent: fs.agent, ledger, users: victims, concurrency: 2, seed: 101 });
  await load.answersAfter(20);
  let n = 0;

  for (let round = 1; round <= 3; round++) {
    await t.test(`round ${round}`, async (t) => {
      const victim = victims[round % victims.length]!;
      const theirs = ledger.ofUser(victim.userId).filter((e) => e.answers[0]?.status === 'completed');
      const stolen = theirs[theirs.length - 1]!;
      const stolenExecution = executionIdFor(victim.userId, stolen.requestId);

      // NATS: another user's subject, another user's id in the body.
      const onTheirSubject = `ta-${n++}`;
      ledger.expect(me.userId, onTheirSubject, 'attack');
      const a1 = await rawRequest(fs.nc, {
        subject: subjects.request(victim.userId, connectionIdentity(fs.nc)),
        body: { requestId: onTheirSubject, tool: 'echo', args: {} },
        token: me.token,
        msgId: `${victim.userId}:${onTheirSubject}`,
      });
      if (a1) ledger.answer(me.userId, onTheirSubject, a1);
      t.match(
        a1,
        { status: 'failed', error: { code: 'FORBIDDEN' } },
        "my token on another user's subject: FORBIDDEN",
      );

      const inTheBody = `ta-${n++}`;
      ledger.expect(me.userId, inTheBody, 'attack');
      const a2 = await rawRequest(fs.nc, {
        subject: subjects.request(me.userId, connectionIdentity(fs.nc)),
        body: { requestId: inTheBody, tool: 'echo', args: {}, userId: victim.userId },
        token: me.token,
        msgId: `${me.userId}:${inTheBody}`,
      });
      if (a2) ledger.answer(me.userId, inTheBody, a2);
      t.match(
        a2,
        { status: 'failed', error: { code: 'FORBIDDEN' } },
        "another user's id in the body: FORBIDDEN",
      );

      // Tokens that are not the victim's to use.
      for (const [what, token] of [
        ['forged (wrong secret)', await sign(victim.userId, 'x'.repeat(48), '1h', ['admin'])],
        ['expired', await sign(victim.userId, FAULT_JWT_SECRET, Math.floor(Date.now() / 1000) - 60)],
        ['unsigned (alg none)', unsigned(victim.userId)],
        [
          'mine with a changed payload',
          `${me.token.split('.')[0]}.${Buffer.from(JSON.stringify({ sub: victim.userId, roles: ['admin'], exp: 9_999_999_999 })).toString('base64url')}.${me.token.split('.')[2]}`,
        ],
      ] as const) {
        const requestId = `tf-${n++}`;
        const a = await rawRequest(fs.nc, {
          subject: subjects.request(victim.userId, connectionIdentity(fs.nc)),
          body: { requestId, tool: 'echo', args: {} },
          token,
          msgId: `${victim.userId}:${requestId}`,
        });
        // Ledgered under the victim: the checker holds that nothing was recorded there.
        ledger.expect(victim.userId, requestId, 'forged');
        if (a) ledger.answer(victim.userId, requestId, a);
        t.match(
          a,
          { status: 'failed', error: { code: 'UNAUTHENTICATED' } },
          `${what} token: UNAUTHENTICATED`,
        );
      }

      // Another user's request id names my own execution, never theirs.
      ledger.expect(me.userId, stolen.requestId, 'attack');
      const a3 = await rawRequest(fs.nc, {
        subject: subjects.request(me.userId, connectionIdentity(fs.nc)),
        body: { requestId: stolen.requestId, tool: stolen.tool, args: stolen.args },
        token: me.token,
        msgId: `${me.userId}:${stolen.requestId}`,
      });
      if (a3) ledger.answer(me.userId, stolen.requestId, a3);
      t.equal(
        a3?.executionId,
        executionIdFor(me.userId, stolen.requestId),
        "another user's request id runs as my own execution",
      );
      t.not(a3?.executionId, stolenExecution, 'and never answers with theirs');

      // Their answers.
      const h = headers();
      h.set(REQUEST_HEADERS.authorization, `Bearer ${me.token}`);
      for (const [what, subject, hdrs] of [
        [
          "my token on the victim's answers subject",
          subjects.answers(victim.userId, connectionIdentity(fs.nc)),
          h,
        ],
        ['no token', subjects.answers(victim.userId, connectionIdentity(fs.nc)), undefined],
      ] as const) {
        let reply: unknown;
        try {
          const m = await fs.nc.request(subject, JSON.stringify({ requestId: stolen.requestId }), {
            timeout: 3_000,
            ...(hdrs ? { headers: hdrs } : {}),
          });
          reply = m.json();
        } catch {
          reply = null;
        }
        t.notMatch(JSON.stringify(reply), stolenExecution, `${what}: the victim's answer is not given out`);
      }

      // WebSocket: their stream, everyone's stream, their identity.
      const s1 = await trySocket(fs, me.token, { type: 'subscribe', userId: victim.userId });
      t.strictSame(
        s1,
        { code: 4403, events: [] },
        "subscribing to another user's events: 4403, nothing sent",
      );
      const s2 = await trySocket(fs, me.token, { type: 'subscribe', userId: '*' });
      t.strictSame(s2, { code: 4403, events: [] }, "subscribing to everyone's events: 4403, nothing sent");
      const s3 = await trySocket(fs, me.token, { type: 'subscribe' }, unsigned(victim.userId));
      t.strictSame(
        s3,
        { code: 4401, events: [] },
        'authenticating as the victim with an unsigned token: 4401',
      );

      // HTTP: their execution on both APIs, their activity, their list.
      const auth = { authorization: `Bearer ${me.token}` };
      t.equal(
        (await httpGet(`${fs.url('dispatcher')}/executions/${stolenExecution}`, auth)).status,
        404,
        "dispatcher: another user's execution is 404",
      );
      t.equal(
        (await httpGet(`${fs.url('projector')}/executions/${stolenExecution}`, auth)).status,
        404,
        "projector: another user's execution is 404",
      );
      t.equal(
        (await httpGet(`${fs.url('projector')}/users/${victim.userId}/activity`, auth)).status,
        403,
        "projector: another user's activity is 403",
      );
      t.equal(
        (await httpGet(`${fs.url('projector')}/executions?userId=${victim.userId}`, auth)).status,
        403,
        "projector: another user's list is 403",
      );
      const posted = `th-${n++}`;
      const res = await fetch(`${fs.url('dispatcher')}/executions`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ requestId: posted, tool: 'echo', args: {}, userId: victim.userId }),
      });
      const body = (await res.json()) as never;
      ledger.expect(me.userId, posted, 'attack');
      ledger.answer(me.userId, posted, body);
      t.equal(res.status, 403, 'dispatcher: POST for another user is 403');
      const admin = await fetch(`${fs.url('dispatcher')}/executions`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${await sign(victim.userId, 'y'.repeat(48), '1h', ['admin'])}`,
          'content-type': 'application/json',
        },
        body: JSON.stringify({ requestId: `tz-${n++}`, tool: 'echo', args: {} }),
      });
      t.equal(admin.status, 401, 'dispatcher: a forged admin token is 401');
    });
  }

  await load.stop();
  await checkNothingLost(t, { store: fs.store, pool: fs.pool, ledger, watchers });
  const mine = watchers.find((w) => w.user.userId === me.userId)!;
  t.ok(
    mine.received.length > 0,
    "the attacker's own socket got the attacker's own events (and, by the checker, only those)",
  );
  t.strictSame(fs.unexpectedExits(), [], 'no service process ended');
});
