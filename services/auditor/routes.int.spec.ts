import { randomBytes } from 'node:crypto';
import t from 'tap';
import type { ToolEvent } from '../../contracts/index.ts';
import { signToken } from '../../lib/auth.ts';
import { type Checkpoint } from './checkpoint.ts';
import { loadAuditorServerConfig } from './config.ts';
import { buildAuditor, startAuditor, type AuditorServerConfig } from './server.ts';
import { alterData, bulkInsertHistory, openTestStore, recordHistory, truncateTail } from './testkit.ts';
import type { VerifyReport } from './verify.ts';

/**
 * The HTTP surface through fastify's inject (and once over a real socket), on a fresh database:
 * who may read, what is recorded in audit_log, and what the answers hold.
 */
type Tap = Parameters<Parameters<typeof t.test>[0]>[0];
type Line = { revision: number; event: ToolEvent };
const JWT_SECRET = randomBytes(32).toString('hex');
const AUDIT_SIGNING_KEY = randomBytes(32).toString('hex');

async function setup(t: Tap, executions = 8) {
  const db = await openTestStore(t);
  await recordHistory(db.store, 'alice', executions);
  const config: AuditorServerConfig = loadAuditorServerConfig({
    DATABASE_URL: db.url,
    JWT_SECRET,
    AUDIT_SIGNING_KEY,
    AUDITOR_PORT: '0',
    LOG_LEVEL: 'silent',
  });
  const auditor = await buildAuditor(config);
  t.teardown(() => auditor.close());
  const token = (sub: string, roles: string[]) => signToken(JWT_SECRET, { sub, roles });
  const auditLog = async () =>
    (
      await db.sql.query<{
        actor: string;
        actor_roles: string[];
        via: string;
        action: string;
        subject_user: string;
        range: Record<string, unknown>;
        outcome: string | null;
        events: string | null;
        finished_at: Date | null;
      }>(
        'select actor, actor_roles, via, action, subject_user, range, outcome, events::int as events, finished_at from audit_log order by id',
      )
    ).rows;
  return { ...db, config, auditor, app: auditor.app, token, auditLog };
}

t.test('access: a token with the auditor or admin role, nothing else', async (t) => {
  const { app, token, auditLog } = await setup(t, 2);
  const url = '/audit/users/alice/events';

  const none = await app.inject({ method: 'GET', url });
  t.equal(none.statusCode, 401, 'no token');
  t.equal(none.headers['www-authenticate'], 'Bearer');
  t.equal(none.json().error.code, 'UNAUTHENTICATED');

  const forged = await signToken('another-secret-0123456789abcdefghijkl', { sub: 'eve', roles: ['auditor'] });
  t.equal(
    (await app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${forged}` } })).statusCode,
    401,
    'a token signed with another key',
  );
  const expired = await signToken(
    JWT_SECRET,
    { sub: 'eve', roles: ['auditor'] },
    Math.floor(Date.now() / 1000) - 60,
  );
  const late = await app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${expired}` } });
  t.equal(late.statusCode, 401, 'an expired token');
  t.match(late.json().error.message, /expired/);

  for (const [who, roles] of [
    ['alice', ['user']],
    ['mallory', []],
  ] as const) {
    for (const [method, path] of [
      ['GET', url],
      ['GET', '/audit/users/alice/verify'],
      ['POST', '/audit/users/alice/checkpoint'],
    ] as const) {
      const res = await app.inject({
        method,
        url: path,
        headers: { authorization: `Bearer ${await token(who, [...roles])}` },
      });
      t.equal(res.statusCode, 403, `${who} (${roles.join(',') || 'no roles'}) may not ${method} ${path}`);
      t.equal(res.json().error.code, 'FORBIDDEN');
    }
  }
  const auditor = await app.inject({
    method: 'GET',
    url,
    headers: { authorization: `Bearer ${await token('ida', ['auditor'])}` },
  });
  t.equal(auditor.statusCode, 200, 'an auditor may replay');
  const admin = await app.inject({
    method: 'GET',
    url,
    headers: { authorization: `Bearer ${await token('root', ['admin', 'user'])}` },
  });
  t.equal(admin.statusCode, 200, 'an admin may replay');

  const bad = await app.inject({
    method: 'GET',
    url: '/audit/users/al.ice/events',
    headers: { authorization: `Bearer ${await token('ida', ['auditor'])}` },
  });
  t.equal(bad.statusCode, 400, 'a user id that is not one');

  const rows = await auditLog();
  const denied = rows.filter((r) => r.outcome === 'denied');
  t.equal(denied.length, 6, 'every refused access is recorded');
  t.same(denied.map((r) => [r.actor, r.action, r.subject_user]).slice(0, 3), [
    ['alice', 'replay', 'alice'],
    ['alice', 'verify', 'alice'],
    ['alice', 'checkpoint', 'alice'],
  ]);
  t.same(
    rows
      .filter((r) => r.outcome === 'ok')
      .map((r) => [r.actor, r.actor_roles, r.via, r.action, r.subject_user]),
    [
      ['ida', ['auditor'], 'http', 'replay', 'alice'],
      ['root', ['admin', 'user'], 'http', 'replay', 'alice'],
    ],
    'each replay is recorded with who, whose and how',
  );
  t.equal(rows.length, 8, 'requests without a valid token name no one and are not recorded');
});

t.test('replay: NDJSON and timeline, whole or by range, each recorded', async (t) => {
  const { app, token, auditLog } = await setup(t, 8);
  const headers = { authorization: `Bearer ${await token('ida', ['auditor'])}` };

  const all = await app.inject({ method: 'GET', url: '/audit/users/alice/events', headers });
  t.equal(all.statusCode, 200);
  t.match(all.headers['content-type'], /application\/x-ndjson/);
  const lines = all.body
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as Line);
  t.equal(lines.length, 22, 'every event, one per line');
  t.same(
    lines.map((l) => l.revision),
    [...Array(22).keys()],
  );
  t.equal(lines[0]!.event.type, 'ToolRequested');
  t.equal(lines[0]!.event.metadata.userId, 'alice');
  t.match(
    lines[0]!.event.metadata.hash,
    /^[0-9a-f]{64}$/,
    'exported with their hashes, so the export can be verified',
  );

  const range = await app.inject({
    method: 'GET',
    url: '/audit/users/alice/events?fromRevision=3&toRevision=7&format=timeline',
    headers,
  });
  t.equal(range.statusCode, 200);
  t.match(range.headers['content-type'], /text\/plain/);
  const rows = range.body.trimEnd().split('\n');
  t.equal(rows.length, 6, 'a header and five events');
  t.match(rows[0], /REVISION\s+TIME\s+TYPE\s+TOOL\s+EXECUTION\s+OUTCOME/);
  t.match(
    rows[1],
    /^\s+3\s+2025-03-01T11:00:00.000Z\s+ToolRequested\s+send_mail@1.0.0\s+[0-9a-f-]{36}\s+requested/,
  );
  t.match(rows[3], /^\s+5\s+\S+\s+ToolFailed\s+send_mail@1.0.0\s+[0-9a-f-]{36}\s+failed TOOL_ERROR/);
  t.match(rows[5], /^\s+7\s+\S+\s+ToolFailed\s+search@1.0.0\s+\S+\s+failed FORBIDDEN/);

  const byTime = await app.inject({
    method: 'GET',
    url: '/audit/users/alice/events?from=2025-03-01T12:00:00Z&to=2025-03-01T12:59:59Z',
    headers,
  });
  t.same(
    byTime.body
      .trimEnd()
      .split('\n')
      .map((l) => (JSON.parse(l) as Line).revision),
    [6, 7],
  );

  for (const q of [
    'fromRevision=-1',
    'fromRevision=5&toRevision=2',
    'from=yesterday',
    'format=xml',
    'limit=3',
  ]) {
    const res = await app.inject({ method: 'GET', url: `/audit/users/alice/events?${q}`, headers });
    t.equal(res.statusCode, 400, `refuses ${q}`);
  }

  const log = await auditLog();
  t.same(
    log.slice(0, 3).map((r) => [r.outcome, Number(r.events)]),
    [
      ['ok', 22],
      ['ok', 5],
      ['ok', 2],
    ],
  );
  t.same(log[1]!.range, { fromRevision: 3, toRevision: 7, format: 'timeline' }, 'the range is recorded');
  t.same(log[2]!.range, {
    from: '2025-03-01T12:00:00.000Z',
    to: '2025-03-01T12:59:59.000Z',
    format: 'ndjson',
  });
  t.ok(
    log.every((r) => r.finished_at !== null),
    'every access is closed with its outcome',
  );
  t.equal(log.filter((r) => r.outcome === 'refused').length, 5);
});

t.test('no record, no replay: when audit_log cannot be written the access is refused', async (t) => {
  const { app, token, sql } = await setup(t, 1);
  await sql.query('alter table audit_log rename to audit_log_away');
  const res = await app.inject({
    method: 'GET',
    url: '/audit/users/alice/events',
    headers: { authorization: `Bearer ${await token('ida', ['auditor'])}` },
  });
  t.equal(res.statusCode, 503);
  t.equal(res.json().error.code, 'AUDIT_LOG_UNAVAILABLE');
  t.notMatch(res.body, /ToolRequested/, 'no event was sent');
});

t.test('verify and checkpoint over HTTP', async (t) => {
  const { app, token, sql, auditLog } = await setup(t, 8);
  const headers = { authorization: `Bearer ${await token('ida', ['auditor'])}` };

  const ok = await app.inject({ method: 'GET', url: '/audit/users/alice/verify', headers });
  t.equal(ok.statusCode, 200);
  const report = ok.json<VerifyReport>();
  t.equal(report.ok, true);
  t.equal(report.events, 22);

  const issued = await app.inject({ method: 'POST', url: '/audit/users/alice/checkpoint', headers });
  t.equal(issued.statusCode, 200);
  const checkpoint = issued.json<{ checkpoint: Checkpoint }>().checkpoint;
  t.match(checkpoint, { userId: 'alice', revision: 21, issuedBy: 'ida', algorithm: 'HMAC-SHA256' });

  const against = await app.inject({
    method: 'POST',
    url: '/audit/users/alice/verify',
    headers,
    payload: { checkpoint },
  });
  t.equal(against.statusCode, 200);
  t.match(against.json(), { ok: true, checkpoint: { revision: 21, matched: true } });

  const forged = await app.inject({
    method: 'POST',
    url: '/audit/users/alice/verify',
    headers,
    payload: { checkpoint: { ...checkpoint, revision: 30 } },
  });
  t.equal(forged.statusCode, 422, 'a forged checkpoint is refused');
  t.equal(forged.json().error.code, 'CHECKPOINT_REFUSED');

  await truncateTail(sql, 'alice', 19);
  const cut = await app.inject({
    method: 'POST',
    url: '/audit/users/alice/verify',
    headers,
    payload: { checkpoint },
  });
  t.match(cut.json(), { ok: false, break: { revision: 19, kind: 'truncated' } });

  await alterData(sql, 'alice', 4, (d) => (d['runner'] = 'someone-else'));
  const broken = await app.inject({ method: 'GET', url: '/audit/users/alice/verify', headers });
  t.equal(broken.statusCode, 200, 'a broken history is a finding, not a failed request');
  t.match(broken.json(), { ok: false, events: 4, break: { revision: 4, kind: 'hash' } });

  const refused = await app.inject({ method: 'POST', url: '/audit/users/alice/checkpoint', headers });
  t.equal(refused.statusCode, 409, 'no checkpoint for a broken history');
  t.equal(refused.json().error.code, 'HISTORY_BROKEN');
  t.match(refused.json().error.details, { break: { revision: 4 } });

  const empty = await app.inject({ method: 'POST', url: '/audit/users/nobody/checkpoint', headers });
  t.equal(empty.statusCode, 404, 'nothing to checkpoint for a user without events');

  const log = await auditLog();
  t.same(
    log.map((r) => [r.action, r.outcome]),
    [
      ['verify', 'ok'],
      ['checkpoint', 'ok'],
      ['verify', 'ok'],
      ['verify', 'refused'],
      ['verify', 'broken'],
      ['verify', 'broken'],
      ['checkpoint', 'broken'],
      ['checkpoint', 'ok'],
    ],
  );
});

t.test('startAuditor listens, streams, answers health checks and closes', async (t) => {
  const db = await openTestStore(t);
  await recordHistory(db.store, 'alice', 40);
  const auditor = await startAuditor(
    loadAuditorServerConfig({
      DATABASE_URL: db.url,
      JWT_SECRET,
      AUDIT_SIGNING_KEY,
      AUDITOR_PORT: '0',
      LOG_LEVEL: 'silent',
    }),
  );
  t.teardown(() => auditor.close());
  t.ok(auditor.port > 0);
  const ready = await fetch(`${auditor.url}/health/ready`);
  t.equal(ready.status, 200);
  const res = await fetch(`${auditor.url}/audit/users/alice/events`, {
    headers: { authorization: `Bearer ${await signToken(JWT_SECRET, { sub: 'ida', roles: ['auditor'] })}` },
  });
  t.equal(res.status, 200);
  t.equal(res.headers.get('transfer-encoding'), 'chunked', 'the body is streamed, not built whole');
  const text = await res.text();
  t.equal(text.trimEnd().split('\n').length, 110);

  // A client that goes away mid-stream: the replay stops and its audit row says so.
  await bulkInsertHistory(db.sql, 'bulk', 3000);
  const abort = new AbortController();
  const partial = await fetch(`${auditor.url}/audit/users/bulk/events`, {
    headers: { authorization: `Bearer ${await signToken(JWT_SECRET, { sub: 'ida', roles: ['auditor'] })}` },
    signal: abort.signal,
  });
  const reader = partial.body!.getReader();
  await reader.read();
  abort.abort();
  let row: { outcome: string | null; events: number | null } | undefined;
  for (let i = 0; i < 200 && !row?.outcome; i++) {
    await new Promise((r) => setTimeout(r, 50));
    row = (
      await db.sql.query<{ outcome: string | null; events: number | null }>(
        `select outcome, events::int as events from audit_log where subject_user = 'bulk'`,
      )
    ).rows[0];
  }
  t.equal(row?.outcome, 'aborted', 'a replay cut short by the client is recorded as aborted');
  t.ok((row?.events ?? 9000) < 9000, `after ${row?.events ?? '?'} of 9000 events`);

  await auditor.close();
  await t.rejects(fetch(`${auditor.url}/health/live`), 'closed');
});
