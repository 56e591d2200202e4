import { connectionIdentity, inboxFor } from '../../lib/nats.ts';
import fc from 'fast-check';
import { SignJWT } from 'jose';
import t from 'tap';
import { WebSocket } from 'ws';
import { subjects } from '../../contracts/index.ts';
import { checkNothingLost } from './checker.ts';
import { httpGet, startFaultStack, waitHealthy } from './harness.ts';
import {
  badBytes,
  hostileFrame,
  hostileObjectText,
  hostileRequest,
  INBOX,
  objectText,
  REQUEST_ID,
  wrongType,
} from './hostile.ts';
import { Ledger, parseTerminal, send, startLoad } from './load.ts';
import type { TerminalAnswer } from '../../lib/clients/agent.ts';
import { lookupAnswer, makeUsers, rawRequest } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Fault 9: hostile input, generated with fast-check (deep nesting, huge strings, unknown keys,
 * `__proto__` / `constructor` keys, wrong types, invalid UTF-8): published raw on NATS with a
 * valid token and without, posted to the HTTP APIs, and sent as WebSocket frames, while two
 * ordinary users keep working. Each must be refused quickly with a clear error (and, when a user
 * is known and the request can be named, recorded as that user's refusal); no prototype may be
 * touched, in this process or in the services (probed through behaviour that a polluted
 * prototype would change: roles, another user's events); every process keeps serving.
 */

const REFUSED = new Set(['VALIDATION', 'MALFORMED', 'UNKNOWN_TOOL', 'FORBIDDEN']);
const prototypeKeys = () => Object.getOwnPropertyNames(Object.prototype).sort();

/** Opens a socket (with a ticket when given), optionally subscribes, sends `frame`; resolves how it ended. */
async function sendFrame(
  base: string,
  frame: string | Uint8Array,
  ticket: string | null,
): Promise<{ closed: number | null; errors: string[]; ready: boolean }> {
  const url = new URL('/ws', base.replace(/^http/, 'ws'));
  if (ticket) url.searchParams.set('ticket', ticket);
  const ws = new WebSocket(url);
  const errors: string[] = [];
  let ready = false;
  const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
  ws.on('error', () => undefined);
  ws.on('message', (data) => {
    try {
      const n = JSON.parse((data as Buffer).toString()) as { kind?: string; code?: string };
      if (n.kind === 'ready') ready = true;
      if (n.kind === 'error') errors.push(String(n.code));
    } catch {
      errors.push('unparseable');
    }
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  if (ticket) {
    ws.send(JSON.stringify({ type: 'subscribe' }));
    for (let i = 0; i < 100 && !ready; i++) await new Promise((r) => setTimeout(r, 50));
  }
  ws.send(frame, { binary: false });
  const code = await Promise.race([closed, new Promise<null>((r) => setTimeout(() => r(null), 5_000))]);
  ws.terminate();
  return { closed: code, errors, ready };
}

async function ticketFor(base: string, token: string): Promise<string> {
  const res = await fetch(new URL('/tickets', base), {
    method: 'POST',
    headers: { authorization: `Bearer ${token}` },
  });
  const body = (await res.json()) as { ticket?: string };
  if (!body.ticket) throw new Error(`no ticket: ${res.status}`);
  return body.ticket;
}

t.test('hostile input is refused clearly, pollutes nothing, and every process keeps serving', async (t) => {
  const before = prototypeKeys();
  const fs = await startFaultStack(t);
  const [fuzzer, ...bystanders] = await makeUsers(fs, 'hx', 3);
  const watchers = startWatchers(fs.url('notifier'), [fuzzer!, ...bystanders]);
  t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
  const ledger = new Ledger();
  const load = startLoad({
    agent: fs.agent,
    ledger,
    users: bystanders,
    concurrency: 1,
    seed: 91,
    pauseMs: 200,
  });
  const me = fuzzer!;
  const other = bystanders[0]!;
  let n = 0;

  await t.test(
    "fuzzed requests on NATS with a valid token: refused and recorded as the caller's",
    async (t) => {
      const outcomes: Record<string, number> = {};
      await fc.assert(
        fc.asyncProperty(hostileRequest(REQUEST_ID, INBOX, other.userId), async (template) => {
          const requestId = `fz-${n++}`;
          const inbox = inboxFor(fs.nc);
          const text = template.replace(REQUEST_ID, requestId).replace(INBOX, inbox);
          ledger.expect(me.userId, requestId, 'fuzz');
          const sub = fs.nc.subscribe(inbox, { max: 1, timeout: 10_000 });
          await rawRequest(fs.nc, {
            subject: subjects.request(me.userId, connectionIdentity(fs.nc)),
            body: text,
            token: me.token,
            msgId: `${me.userId}:${requestId}`,
            timeoutMs: 0,
          });
          let direct: TerminalAnswer | null = null;
          try {
            for await (const m of sub) direct = parseTerminal(m.data);
          } catch {
            // no direct answer (the body was too large to read its replyTo): ask what became of it
          }
          if (direct) ledger.answer(me.userId, requestId, direct);
          const settled = await lookupAnswer(fs.nc, me, requestId);
          if (settled) ledger.answer(me.userId, requestId, settled);
          const code =
            settled === null ? 'none' : settled.status === 'completed' ? 'completed' : settled.error.code;
          outcomes[code] = (outcomes[code] ?? 0) + 1;
          if (settled?.status !== 'completed' && (!REFUSED.has(code) || !settled?.error.message)) {
            throw new Error(`${requestId}: ${code} for ${text.slice(0, 200)}`);
          }
        }),
        { numRuns: 40, seed: 9, endOnFailure: true },
      );
      t.comment(`outcomes ${JSON.stringify(outcomes)}`);
      t.ok((outcomes['VALIDATION'] ?? 0) > 0, 'malformed ones are refused VALIDATION, each with its reason');
      t.ok(
        Object.keys(outcomes).length >= 3,
        'and the well-formed ones get as far as the tool, its roles or its run',
      );
    },
  );

  await t.test('an empty correlation id is refused like any other invalid field', async (t) => {
    const requestId = `fz-empty-correlation-${n++}`;
    ledger.expect(me.userId, requestId, 'fuzz');
    const answer = await rawRequest(fs.nc, {
      subject: subjects.request(me.userId, connectionIdentity(fs.nc)),
      body: { requestId, tool: 'echo', args: {}, correlationId: '' },
      token: me.token,
      msgId: `${me.userId}:${requestId}`,
      timeoutMs: 10_000,
    });
    if (answer) ledger.answer(me.userId, requestId, answer);
    t.match(answer, { status: 'failed', error: { code: 'VALIDATION' } }, 'answered VALIDATION');
  });

  await t.test('raw bytes on NATS (invalid UTF-8, not JSON, deep): refused and recorded', async (t) => {
    await fc.assert(
      fc.asyncProperty(badBytes, async (bytes) => {
        const requestId = `fb-${n++}`;
        ledger.expect(me.userId, requestId, 'bytes');
        await rawRequest(fs.nc, {
          subject: subjects.request(me.userId, connectionIdentity(fs.nc)),
          body: bytes,
          token: me.token,
          msgId: `${me.userId}:${requestId}`,
          timeoutMs: 0,
        });
        const answer = await lookupAnswer(fs.nc, me, requestId);
        if (answer) ledger.answer(me.userId, requestId, answer);
        if (answer?.status !== 'failed' || answer.error.code !== 'VALIDATION' || !answer.error.message) {
          throw new Error(`${requestId}: ${JSON.stringify(answer)}`);
        }
      }),
      { numRuns: 20, seed: 10, endOnFailure: true },
    );
    t.pass('each is a recorded VALIDATION refusal with a reason');
  });

  await t.test('fuzzed requests without a valid token: UNAUTHENTICATED, nothing recorded', async (t) => {
    const forged = await new SignJWT({ roles: ['admin'] })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject(other.userId)
      .setExpirationTime('1h')
      .sign(new TextEncoder().encode('not-the-secret-not-the-secret-not-the-secret'));
    const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(
      JSON.stringify({ sub: other.userId, roles: ['admin'], exp: 9_999_999_999 }),
    ).toString('base64url')}.`;
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom<string | null>(null, '', 'garbage', forged, none, `${me.token}x`),
        hostileObjectText,
        async (token, args) => {
          const requestId = `fu-${n++}`;
          const inbox = inboxFor(fs.nc);
          const sub = fs.nc.subscribe(inbox, { max: 1, timeout: 10_000 });
          await rawRequest(fs.nc, {
            subject: subjects.request(other.userId, connectionIdentity(fs.nc)),
            body: objectText([
              ['requestId', JSON.stringify(requestId)],
              ['replyTo', JSON.stringify(inbox)],
              ['tool', '"echo"'],
              ['args', args.length > 200_000 ? '{}' : args],
            ]),
            token,
            timeoutMs: 0,
          });
          let got: TerminalAnswer | null = null;
          for await (const m of sub) got = parseTerminal(m.data);
          if (got?.status !== 'failed' || got.error.code !== 'UNAUTHENTICATED' || !got.error.message) {
            throw new Error(`${requestId}: ${JSON.stringify(got)}`);
          }
          ledger.expect(other.userId, requestId, 'unauthenticated');
          ledger.answer(other.userId, requestId, got);
        },
      ),
      { numRuns: 20, seed: 11, endOnFailure: true },
    );
    t.pass('each is answered UNAUTHENTICATED (the checker holds that nothing was recorded)');
  });

  await t.test(
    'fuzzed HTTP bodies, paths, queries and headers: 4xx with a reason, never a 5xx',
    async (t) => {
      const dispatcher = fs.url('dispatcher');
      const statuses: Record<string, number> = {};
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(hostileObjectText, wrongType, hostileRequest(REQUEST_ID, INBOX, other.userId)),
          fc.boolean(),
          async (text, withToken) => {
            const requestId = `hz-${n++}`;
            const body = text.includes(REQUEST_ID)
              ? text.replace(REQUEST_ID, requestId).replace(`"replyTo":"${INBOX}",`, '')
              : text.startsWith('{')
                ? text.replace(/^\{/, `{"requestId":${JSON.stringify(requestId)},`)
                : text;
            const res = await fetch(`${dispatcher}/executions`, {
              method: 'POST',
              headers: {
                'content-type': 'application/json',
                ...(withToken ? { authorization: `Bearer ${me.token}` } : {}),
              },
              body,
              signal: AbortSignal.timeout(20_000),
            });
            const text2 = await res.text();
            const reply = JSON.parse(text2) as {
              status?: string;
              requestId?: string;
              error?: unknown;
              message?: string;
            };
            const answer = parseTerminal(new TextEncoder().encode(text2));
            statuses[res.status] = (statuses[res.status] ?? 0) + 1;
            if (answer) statuses['answers'] = (statuses['answers'] ?? 0) + 1;
            if (withToken && answer && answer.requestId === requestId) {
              ledger.expect(me.userId, requestId, 'http');
              ledger.answer(me.userId, requestId, answer);
            }
            const clear = typeof reply.message === 'string' || reply.error !== undefined;
            if (res.status >= 500 || res.status < 200 || !clear) {
              throw new Error(
                `POST ${body.slice(0, 200)} -> ${res.status} ${JSON.stringify(reply).slice(0, 300)}`,
              );
            }
            if (!withToken && res.status !== 401 && res.status !== 400 && res.status !== 413) {
              throw new Error(`no token but ${res.status}`);
            }
          },
        ),
        { numRuns: 30, seed: 12, endOnFailure: true },
      );
      t.comment(`POST /executions statuses ${JSON.stringify(statuses)}`);
      t.ok((statuses['answers'] ?? 0) > 0, 'some got past the HTTP layer and were answered by a dispatcher');

      await fc.assert(
        fc.asyncProperty(
          fc.string({ maxLength: 300 }),
          fc.string({ maxLength: 100 }),
          async (segment, query) => {
            const auth = { authorization: `Bearer ${me.token}` };
            const targets = [
              `${dispatcher}/executions/${encodeURIComponent(segment)}`,
              `${fs.url('projector')}/executions/${encodeURIComponent(segment)}`,
              `${fs.url('projector')}/executions?${encodeURIComponent(segment)}=${encodeURIComponent(query)}&status=${encodeURIComponent(query)}`,
              `${fs.url('projector')}/users/${encodeURIComponent(segment)}/activity`,
              `${fs.url('projector')}/tools/metrics?from=${encodeURIComponent(query)}`,
            ];
            for (const url of targets) {
              const { status, text } = await httpGet(url, auth, 10_000);
              if (status >= 500 || status === 0)
                throw new Error(`GET ${url} -> ${status} ${text.slice(0, 200)}`);
            }
            const ticket = await fetch(`${fs.url('notifier')}/tickets`, {
              method: 'POST',
              headers: { authorization: `Bearer ${segment.replace(/[^\x20-\x7e]/g, '')}` },
            });
            if (ticket.status !== 401)
              throw new Error(`POST /tickets with a fuzzed token -> ${ticket.status}`);
          },
        ),
        { numRuns: 25, seed: 13, endOnFailure: true },
      );
      t.pass('fuzzed paths, queries and tokens get 4xx answers');
    },
  );

  await t.test(
    'fuzzed WebSocket frames: the socket is closed with a reason, the notifier goes on',
    async (t) => {
      const base = fs.url('notifier');
      const codes: Record<string, number> = {};
      await fc.assert(
        fc.asyncProperty(hostileFrame, fc.boolean(), async (frame, authenticated) => {
          const ticket = authenticated ? await ticketFor(base, me.token) : null;
          const r = await sendFrame(base, frame, ticket);
          const key = r.closed === null ? `open:${r.errors.join(',')}` : String(r.closed);
          codes[key] = (codes[key] ?? 0) + 1;
          const refused = r.closed !== null && [4400, 4401, 1007, 1009, 4429].includes(r.closed);
          if (!refused && r.errors.length === 0) {
            throw new Error(`frame ${String(frame).slice(0, 120)}: ${JSON.stringify(r)}`);
          }
        }),
        { numRuns: 30, seed: 14, endOnFailure: true },
      );
      t.comment(`close codes ${JSON.stringify(codes)}`);
      t.pass('each hostile frame is refused');
    },
  );

  await t.test('nothing was polluted, and every process still serves', async (t) => {
    t.strictSame(prototypeKeys(), before, 'Object.prototype of this process is untouched');
    t.equal(({} as Record<string, unknown>)['polluted'], undefined, 'no object here is "polluted"');
    await waitHealthy(fs, ['dispatcher', 'projector', 'notifier']);
    const echo = await send(fs.agent, ledger, me, `probe-echo-${n++}`, { tool: 'echo', args: { probe: 1 } });
    t.match(echo, { status: 'completed', result: { probe: 1 } }, 'a normal request succeeds');
    t.notOk(
      echo?.status === 'completed' && 'polluted' in (echo.result as object),
      'its result carries nothing extra',
    );
    const admin = await send(fs.agent, ledger, me, `probe-admin-${n++}`, {
      tool: 'admin_runtime_info',
      args: {},
    });
    t.match(
      admin,
      { status: 'failed', error: { code: 'FORBIDDEN' } },
      'an admin-only tool is still refused to a user',
    );
    const peek = await sendFrame(
      fs.url('notifier'),
      JSON.stringify({ type: 'subscribe', userId: other.userId }),
      null,
    );
    t.equal(peek.closed, 4401, 'a socket without a ticket still cannot subscribe');
    const ticket = await ticketFor(fs.url('notifier'), me.token);
    const url = new URL('/ws', fs.url('notifier').replace(/^http/, 'ws'));
    url.searchParams.set('ticket', ticket);
    const ws = new WebSocket(url);
    ws.on('error', () => undefined);
    await new Promise((r) => ws.once('open', r));
    const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
    ws.send(JSON.stringify({ type: 'subscribe', userId: other.userId }));
    t.equal(await closed, 4403, "another user's events are still refused (4403)");
    const activity = await httpGet(`${fs.url('projector')}/users/${other.userId}/activity`, {
      authorization: `Bearer ${me.token}`,
    });
    t.equal(activity.status, 403, "another user's activity is still refused (403)");
  });

  await load.stop();
  await checkNothingLost(t, {
    store: fs.store,
    pool: fs.pool,
    ledger,
    watchers,
    strangers: bystanders.map((u) => u.userId),
  });
  t.strictSame(fs.unexpectedExits(), [], 'no service process ended');
});
