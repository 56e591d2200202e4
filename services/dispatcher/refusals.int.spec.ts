import { randomBytes } from 'node:crypto';
import { connectionIdentity } from '../../lib/nats.ts';
import pg from 'pg';
import t from 'tap';
import { z } from 'zod';
import {
  argsHash,
  canonicalJson,
  executionIdFor,
  LIMITS,
  omitArgs,
  subjects,
  userStream,
  verifyChain,
  type JsonObject,
} from '../../contracts/index.ts';
import { defineTool } from '../../lib/tools/index.ts';
import { eventually, harness, rawRequest, type Harness } from './test/harness.ts';

const adminOnly = defineTool({
  name: 'admin_only',
  version: '1.0.0',
  description: 'Test tool that only admins may run.',
  input: z.object({ note: z.string().optional() }),
  output: z.object({ ok: z.boolean() }),
  roles: ['admin'],
  timeoutMs: 2_000,
  sensitive: { input: ['note'] },
  async run() {
    return { ok: true };
  },
});

/** A valid request that completes: once answered, everything sent before it has been handled too (one user). */
async function barrier(h: Harness, userId: string, token: string, id: string) {
  const a = await h.agent.execute('noop', {}, { token, requestId: id });
  if (a.status !== 'completed') throw new Error(`barrier failed: ${JSON.stringify(a)}`);
}

t.test('refusals', async (t) => {
  const h = await harness(t);
  await h.start({}, { tools: [adminOnly] });
  const alice = await h.token('alice');

  t.test(
    'UNAUTHENTICATED: missing, expired, forged and wrongly signed tokens; nothing is recorded',
    async (t) => {
      const expired = await h.token('alice', ['user'], Math.floor(Date.now() / 1000) - 10);
      const forged = `${alice.slice(0, -6)}abcdef`;
      const { signToken } = await import('../../lib/auth.ts');
      const otherKey = await signToken('x'.repeat(40), { sub: 'alice', roles: ['admin'] });
      const cases: Array<[string, string | undefined]> = [
        ['no token', undefined],
        ['an expired token', expired],
        ['a forged token', forged],
        ['a token signed with another key', otherKey],
        ['not a JWT', 'hello'],
      ];
      for (const [what, token] of cases) {
        const a = await rawRequest(h, {
          subject: subjects.request('alice', connectionIdentity(h.nc)),
          body: { requestId: `unauth-${what.replaceAll(' ', '-')}`, tool: 'noop', args: {} },
          token,
          msgId: `alice:unauth-${what.replaceAll(' ', '-')}`,
        });
        t.match(a, { status: 'failed', executionId: null, error: { code: 'UNAUTHENTICATED' } }, what);
      }
      await barrier(h, 'alice', alice, 'after-unauth');
      const events = await h.events('alice');
      t.strictSame(
        new Set(events.map((e) => e.metadata.requestId)),
        new Set(['after-unauth']),
        'none of them was recorded',
      );
    },
  );

  t.test('FORBIDDEN: a token for one user naming another, recorded in the token user stream', async (t) => {
    const onBobsSubject = await rawRequest(h, {
      subject: subjects.request('bob', connectionIdentity(h.nc)),
      body: { requestId: 'as-bob-1', tool: 'noop', args: {} },
      token: alice,
      msgId: 'alice:as-bob-1',
    });
    t.match(onBobsSubject, {
      status: 'failed',
      requestId: 'as-bob-1',
      executionId: executionIdFor('alice', 'as-bob-1'),
      error: { code: 'FORBIDDEN', message: /bob/ },
    });
    const inBody = await rawRequest(h, {
      subject: subjects.request('alice', connectionIdentity(h.nc)),
      body: { requestId: 'as-bob-2', tool: 'noop', args: {}, userId: 'bob' },
      token: alice,
    });
    t.match(inBody, { status: 'failed', error: { code: 'FORBIDDEN' } });
    const alicesEvents = await h.events('alice');
    for (const id of ['as-bob-1', 'as-bob-2']) {
      const mine = alicesEvents.filter((e) => e.metadata.requestId === id);
      t.strictSame(
        mine.map((e) => e.type),
        ['ToolRequested', 'ToolFailed'],
        `${id}: requested and failed, in one append`,
      );
      t.match(mine[1]?.data, { error: { code: 'FORBIDDEN' }, durationMs: null });
    }
    t.strictSame(await h.events('bob'), [], "nothing in bob's stream");
  });

  t.test('FORBIDDEN: an admin-only tool refuses a user without the role, runs for an admin', async (t) => {
    const refused = await h.agent.execute(
      'admin_only',
      { note: 'private' },
      { token: alice, requestId: 'adm-1' },
    );
    t.match(refused, { status: 'failed', error: { code: 'FORBIDDEN', message: /admin/ } });
    const events = (await h.events('alice')).filter((e) => e.metadata.requestId === 'adm-1');
    t.strictSame(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolFailed'],
    );
    t.strictSame(
      events[0]?.data,
      {
        tool: 'admin_only',
        version: '1.0.0',
        args: {},
        redacted: [],
        argsOmitted: omitArgs({ note: '[REDACTED]' }),
      },
      'a refusal stores the size and hash of the arguments, redacted as they would have been stored',
    );
    const root = await h.token('root', ['admin']);
    const ran = await h.agent.execute('admin_only', {}, { token: root, requestId: 'adm-2' });
    t.match(ran, { status: 'completed', result: { ok: true } });
  });

  t.test('UNKNOWN_TOOL: unknown name or version; the arguments are not stored in clear', async (t) => {
    const noSuch = await h.agent.execute(
      'no_such_tool',
      { password: 'p4ss' },
      { token: alice, requestId: 'unk-1' },
    );
    t.match(noSuch, { status: 'failed', error: { code: 'UNKNOWN_TOOL', message: /no_such_tool/ } });
    const badVersion = await h.agent.execute(
      'noop',
      {},
      { token: alice, requestId: 'unk-2', version: '9.9.9' },
    );
    t.match(badVersion, { status: 'failed', error: { code: 'UNKNOWN_TOOL', message: /9\.9\.9/ } });
    const events = (await h.events('alice')).filter((e) => e.metadata.requestId.startsWith('unk-'));
    t.strictSame(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolFailed', 'ToolRequested', 'ToolFailed'],
    );
    t.strictSame(events[0]?.data, {
      tool: 'no_such_tool',
      version: null,
      args: {},
      redacted: [],
      argsOmitted: omitArgs({ password: '[REDACTED]' }),
    });
    t.match(events[2]?.data, { tool: 'noop', version: null }, 'no registered tool: no version recorded');
  });

  t.test('VALIDATION: arguments that do not match the tool input schema', async (t) => {
    const a = await h.agent.execute('sleep', { ms: 'long' }, { token: alice, requestId: 'val-args' });
    t.match(a, { status: 'failed', error: { code: 'VALIDATION', message: /ms/ } });
    const events = (await h.events('alice')).filter((e) => e.metadata.requestId === 'val-args');
    t.equal(events.at(-1)?.type, 'ToolFailed');
    t.match(events.at(-1)?.data, { error: { code: 'VALIDATION' } });
  });

  t.test('bad request bodies: typed refusals, recorded where the user and request are known', async (t) => {
    const send = (body: Record<string, unknown> | string | Uint8Array, msgId?: string, waitMs = 15_000) =>
      rawRequest(h, {
        subject: subjects.request('alice', connectionIdentity(h.nc)),
        body,
        token: alice,
        msgId,
        waitMs,
      });

    const unknownKey = await send({ requestId: 'bad-key', tool: 'noop', args: {}, priority: 'high' });
    t.match(unknownKey, {
      status: 'failed',
      requestId: 'bad-key',
      error: { code: 'VALIDATION', message: /priority/ },
    });
    t.match(
      unknownKey,
      {
        error: {
          message:
            /request id bad-key is now spent on this refusal: send the corrected request with a new one/,
        },
      },
      'the refusal says the request id is spent (a repeat gets this refusal again)',
    );

    const proto = await send(
      '{"requestId":"bad-proto","tool":"echo","args":{"__proto__":{"polluted":true}},"replyTo":"_INBOX.proto1"}',
      undefined,
      0,
    );
    t.equal(proto, null, 'sent without waiting');
    t.equal(({} as Record<string, unknown>)['polluted'], undefined, 'Object.prototype is not polluted');

    const deep = `{"requestId":"bad-deep","tool":"echo","args":${'{"a":'.repeat(40)}1${'}'.repeat(40)}}`;
    await send(deep, undefined, 0);

    await send('{"requestId": "bad-json", not json', 'alice:bad-json', 0);
    await send('not even close', undefined, 0);
    const huge = JSON.stringify({
      requestId: 'bad-huge',
      tool: 'echo',
      args: { pad: 'x'.repeat(LIMITS.maxRequestBytes) },
    });
    await send(huge, 'alice:bad-huge', 0);
    const noId = await send({ requestId: 'has space', tool: 'noop', args: {} });
    t.match(
      noId,
      { status: 'failed', requestId: null, error: { code: 'MALFORMED' } },
      'no usable request id: answered MALFORMED, not recorded',
    );

    await barrier(h, 'alice', alice, 'after-bad-bodies');
    const events = await h.events('alice');
    const byRequest = (id: string) => events.filter((e) => e.metadata.requestId === id);
    for (const id of ['bad-key', 'bad-proto', 'bad-deep', 'bad-json', 'bad-huge']) {
      const mine = byRequest(id);
      t.strictSame(
        mine.map((e) => e.type),
        ['ToolRequested', 'ToolFailed'],
        `${id} recorded as requested + failed`,
      );
      t.match(mine[1]?.data, { error: { code: 'VALIDATION' } }, `${id} failed with VALIDATION`);
    }
    t.match(byRequest('bad-deep')[1]?.data, { error: { message: /nesting deeper than 32/ } });
    t.match(byRequest('bad-proto')[1]?.data, { error: { message: /__proto__/ } });
    t.match(byRequest('bad-json')[1]?.data, { error: { message: /not UTF-8 JSON/ } });
    t.match(byRequest('bad-huge')[1]?.data, { error: { message: /limit 262144/ } });
    t.notOk(events.some((e) => e.metadata.requestId === 'has space'));
    t.equal(verifyChain(events), null, 'refusals keep the chain intact');
  });

  t.test('the dispatcher still serves after all of it', async (t) => {
    const a = await h.agent.execute(
      'echo',
      { ok: 1 },
      { token: await h.token('zed'), requestId: 'still-ok' },
    );
    t.match(a, { status: 'completed', result: { ok: 1 } });
  });
});

t.test('RATE_LIMITED: per-user token bucket, recorded as requested + failed', async (t) => {
  const h = await harness(t, { RATE_LIMIT_PER_SEC: '1', RATE_LIMIT_BURST: '2' });
  await h.start();
  const token = await h.token('rita');
  const answers = await Promise.all(
    Array.from({ length: 8 }, (_, i) => h.agent.execute('noop', {}, { token, requestId: `rl-${i}` })),
  );
  const limited = answers.filter((a) => a.status === 'failed' && a.error.code === 'RATE_LIMITED');
  t.ok(limited.length >= 3, `most of a burst of 8 is limited (got ${limited.length})`);
  t.ok(
    answers.some((a) => a.status === 'completed'),
    'the first ones pass',
  );
  t.match(limited[0], { error: { details: { limit: 'rate' } } });
  const events = await h.events('rita');
  for (const a of limited) {
    const mine = events.filter((e) => e.metadata.requestId === a.requestId);
    t.strictSame(
      mine.map((e) => e.type),
      ['ToolRequested', 'ToolFailed'],
      `${a.requestId} recorded`,
    );
  }
  const other = await h.agent.execute('noop', {}, { token: await h.token('other'), requestId: 'rl-other' });
  t.equal(other.status, 'completed', 'another user is not limited');
});

t.test('RATE_LIMITED: per-user concurrency', async (t) => {
  const h = await harness(t, { USER_CONCURRENCY: '1' });
  await h.start();
  const token = await h.token('conny');
  let executing = false;
  const long = h.agent.execute(
    'sleep',
    { ms: 1_500 },
    {
      token,
      requestId: 'cc-long',
      onProgress: (a) => (executing ||= a.status === 'executing'),
    },
  );
  await eventually(() => executing, 10_000, 'the first execution to run');
  const secondArgs = { pad: 'y'.repeat(50_000) };
  const second = await h.agent.execute('echo', secondArgs, { token, requestId: 'cc-second' });
  t.match(second, { status: 'failed', error: { code: 'RATE_LIMITED', details: { limit: 'concurrency' } } });
  const secondEvents = (await h.events('conny')).filter((e) => e.metadata.requestId === 'cc-second');
  t.strictSame(
    secondEvents.map((e) => [e.type, e.data]),
    [
      [
        'ToolRequested',
        {
          tool: 'echo',
          version: '1.0.0',
          args: {},
          redacted: [],
          argsOmitted: { bytes: Buffer.byteLength(JSON.stringify(secondArgs)), sha256: argsHash(secondArgs) },
        },
      ],
      ['ToolFailed', { error: second.status === 'failed' ? second.error : null, durationMs: null }],
    ],
    'refused for concurrency: the size and hash of the arguments, not the arguments',
  );
  const otherUser = await h.agent.execute(
    'noop',
    {},
    { token: await h.token('connie2'), requestId: 'cc-other' },
  );
  t.equal(otherUser.status, 'completed', 'another user is not limited');
  t.match(await long, { status: 'completed' });
  const third = await h.agent.execute('noop', {}, { token, requestId: 'cc-third' });
  t.equal(third.status, 'completed', 'the slot is free again once the first finished');
});

t.test('RATE_LIMITED with large arguments: the store keeps their size and hash, not them', async (t) => {
  const h = await harness(t, { RATE_LIMIT_PER_SEC: '1', RATE_LIMIT_BURST: '2' });
  await h.start();
  const token = await h.token('flo');
  // Random (incompressible) arguments of about 100 KB each, all different.
  const sent = new Map<string, JsonObject>(
    Array.from({ length: 24 }, (_, i) => [`big-${i}`, { i, pad: randomBytes(75_000).toString('base64') }]),
  );
  const answers = await Promise.all(
    [...sent].map(([requestId, args]) => h.agent.execute('echo', args, { token, requestId })),
  );
  const limited = answers.filter((a) => a.status === 'failed' && a.error.code === 'RATE_LIMITED');
  const accepted = answers.filter((a) => a.status === 'completed');
  t.ok(limited.length >= 3, `most of them are refused (${limited.length} of ${answers.length})`);
  t.ok(accepted.length >= 1, 'the first ones run');

  const events = await h.events('flo');
  t.equal(verifyChain(events), null, 'the chain holds');
  const requested = (id: string) =>
    events.find((e) => e.type === 'ToolRequested' && e.metadata.requestId === id);
  for (const a of limited) {
    const args = sent.get(a.requestId!)!;
    const mine = events.filter((e) => e.metadata.requestId === a.requestId);
    t.strictSame(
      mine.map((e) => e.type),
      ['ToolRequested', 'ToolFailed'],
      `${a.requestId}: requested and failed`,
    );
    t.strictSame(
      requested(a.requestId!)?.data,
      {
        tool: 'echo',
        version: '1.0.0',
        args: {},
        redacted: [],
        argsOmitted: { bytes: Buffer.byteLength(canonicalJson(args)), sha256: argsHash(args) },
      },
      `${a.requestId}: size and hash of the arguments sent, not the arguments`,
    );
    t.match(mine[1]?.data, { error: { code: 'RATE_LIMITED', details: { limit: 'rate' } }, durationMs: null });
  }
  for (const a of accepted) {
    t.strictSame(
      requested(a.requestId)?.data,
      { tool: 'echo', version: '1.0.0', args: sent.get(a.requestId), redacted: [] },
      `${a.requestId}: run, and its arguments stored in full`,
    );
  }

  // What the refusals wrote, as PostgreSQL stores it (after TOAST compression), against what they sent.
  const refusedIds = limited.map((a) => a.requestId!);
  const sentBytes = refusedIds.reduce((n, id) => n + Buffer.byteLength(canonicalJson(sent.get(id)!)), 0);
  const pool = new pg.Pool({ connectionString: h.databaseUrl, max: 1 });
  try {
    const { rows } = await pool.query<{ bytes: number }>(
      `select coalesce(sum(pg_column_size(data) + pg_column_size(metadata)), 0)::int as bytes
         from toolbus_events where stream_id = $1 and metadata->>'requestId' = any($2::text[])`,
      [userStream('flo'), refusedIds],
    );
    const stored = rows[0]!.bytes;
    t.ok(stored > 0, 'the refusals are recorded');
    t.ok(
      stored * 50 < sentBytes,
      `${refusedIds.length} refusals stored ${stored} bytes for ${sentBytes} bytes of arguments`,
    );
  } finally {
    await pool.end();
  }

  // A repeat of a refused request id: the same answer, nothing more recorded.
  const first = limited[0]!;
  const again = await h.agent.execute('echo', sent.get(first.requestId!)!, {
    token,
    requestId: first.requestId!,
  });
  t.strictSame(again, first, 'a repeat gets the first answer');
  const after = (await h.events('flo')).filter((e) => e.metadata.requestId === first.requestId);
  t.equal(after.length, 2, 'and records nothing');
});
