import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import t from 'tap';
import { ConfigError } from '../../lib/config.ts';
import { CheckpointRefusedError, keyIdOf, openCheckpoint, signCheckpoint } from './checkpoint.ts';
import { loadAuditorConfig, loadAuditorServerConfig } from './config.ts';
import { Progress } from './progress.ts';
import { TIMELINE_HEADER, toNdjson, toTimelineLine } from './replay.ts';

/** Checkpoint signing, the progress line, the timeline format and the auditor's configuration. */
const KEY = 'unit-test-signing-key-0123456789abcdefgh';
const body = {
  userId: 'alice',
  stream: 'user-alice',
  revision: 41,
  eventId: '6f28c837-f559-5806-aad3-1117e06f90d3',
  hash: 'ab'.repeat(32),
  events: 42,
  issuedAt: '2025-05-01T12:00:00.000Z',
  issuedBy: 'ida',
};

t.test('checkpoints', async (t) => {
  const cp = signCheckpoint(body, KEY);
  t.match(cp, {
    kind: 'toolbus.audit.checkpoint',
    version: 1,
    algorithm: 'HMAC-SHA256',
    keyId: keyIdOf(KEY),
  });
  t.same(openCheckpoint(JSON.parse(JSON.stringify(cp)), KEY, 'alice'), cp, 'survives a trip through a file');
  t.same(openCheckpoint({ ...cp }, KEY, 'alice'), cp);

  for (const [field, value] of [
    ['revision', 40],
    ['hash', 'cd'.repeat(32)],
    ['eventId', '12b50dd5-7fc4-524d-9ef9-106fd3a3c67d'],
    ['issuedAt', '2025-05-02T12:00:00.000Z'],
    ['issuedBy', 'eve'],
    ['userId', 'bob'],
  ] as const) {
    t.throws(
      () => openCheckpoint({ ...cp, [field]: value }, KEY, 'alice'),
      CheckpointRefusedError,
      `a changed ${field} is refused`,
    );
  }
  t.throws(() => openCheckpoint({ ...cp, signature: 'A'.repeat(43) }, KEY, 'alice'), {
    message: /altered or forged/,
  });
  t.throws(() => openCheckpoint(cp, `${KEY}-other`, 'alice'), { message: /another key/ });
  t.throws(() => openCheckpoint(signCheckpoint(body, KEY), KEY, 'bob'), {
    message: /for user alice, not bob/,
  });
  t.throws(() => openCheckpoint({ hello: 1 }, KEY, 'alice'), { message: /not a checkpoint/ });
  t.throws(() => openCheckpoint({ ...cp, extra: 1 }, KEY, 'alice'), { message: /not a checkpoint/ });
  t.throws(() => signCheckpoint({ ...body, revision: -1 }, KEY), 'a checkpoint must name a real revision');
});

t.test('the progress line', async (t) => {
  let out = '';
  const sink = Object.assign(
    new Writable({
      write(chunk: Buffer, _enc, done) {
        out += chunk.toString();
        done();
      },
    }),
    { isTTY: false },
  );
  let now = 0;
  const p = new Progress('verify user-alice', { enabled: true, out: sink, now: () => now });
  p.start();
  for (let i = 0; i < 4096; i++) {
    now += 1;
    p.tick(i);
  }
  p.done();
  const lines = out.trimEnd().split('\n');
  t.match(lines[0], /^verify user-alice: 0 events, 0 events\/s, revision -1, heap [\d.]+ MB$/);
  t.ok(lines.length >= 4 && lines.length <= 6, `about one line a second (${lines.length} lines for 4.1 s)`);
  t.match(
    lines.at(-1),
    /^verify user-alice: 4096 events, 1000 events\/s, revision 4095, heap [\d.]+ MB, done$/,
  );

  out = '';
  const off = new Progress('x', { enabled: false, out: sink, now: () => (now += 1000) });
  off.start();
  for (let i = 0; i < 1000; i++) off.tick(i);
  off.done();
  t.equal(out, '', 'nothing when disabled');
});

t.test('timeline and NDJSON lines', async (t) => {
  const executionId = '6f28c837-f559-5806-aad3-1117e06f90d3';
  const metadata = {
    userId: 'alice',
    executionId,
    requestId: 'req-1',
    correlationId: executionId,
    causationId: null,
    occurredAt: '2025-05-01T12:00:00.000Z',
    prevHash: '0'.repeat(64),
    hash: '1'.repeat(64),
  };
  const failed = {
    revision: 12,
    recordedAt: new Date('2025-05-01T12:00:01.000Z'),
    tool: 'send_mail@1.0.0',
    event: {
      id: executionId,
      type: 'ToolFailed' as const,
      schemaVersion: 1 as const,
      data: { error: { code: 'TIMEOUT' as const, message: 'took\ntoo long' }, durationMs: 5000 },
      metadata,
    },
  };
  t.match(TIMELINE_HEADER, /^REVISION {2}TIME {22}TYPE {19}TOOL {26}EXECUTION {29}OUTCOME\n$/);
  t.equal(
    toTimelineLine(failed),
    `      12  2025-05-01T12:00:00.000Z  ToolFailed             send_mail@1.0.0               ${executionId}  failed TIMEOUT: took too long\n`,
  );
  // The longest type lines up with the others: each column starts where the header's does.
  const approval = toTimelineLine({
    ...failed,
    event: {
      ...failed.event,
      type: 'ToolApprovalRequested',
      data: { approverRoles: ['approver'], deadline: '2025-05-01T13:00:00.000Z' },
    },
  } as Parameters<typeof toTimelineLine>[0]);
  for (const column of ['TOOL', 'EXECUTION', 'OUTCOME']) {
    const at = TIMELINE_HEADER.indexOf(column);
    t.not(approval[at - 1], undefined);
    t.equal(approval.slice(at - 2, at), '  ', `${column} starts after two spaces`);
    t.not(approval[at], ' ', `${column} starts where the header's does`);
  }
  const done = (durationMs: number) =>
    toTimelineLine({
      ...failed,
      event: {
        ...failed.event,
        type: 'ToolCompleted',
        data: { result: 1, redacted: [], durationMs, cached: true },
      },
    });
  t.match(done(0.8048070000004373), / completed in 0\.8 ms \(cached\)\n$/, 'durations are rounded');
  t.match(done(12.3456), / completed in 12\.35 ms/);
  t.match(done(1234.5), / completed in 1235 ms/);
  t.same(JSON.parse(toNdjson(failed)), {
    revision: 12,
    recordedAt: '2025-05-01T12:00:01.000Z',
    event: failed.event,
  });
  const invalid = {
    revision: 13,
    recordedAt: new Date('2025-05-01T12:00:02.000Z'),
    invalid: 'ToolPaused x: does not match its schema',
    raw: { id: 'x', type: 'ToolPaused', data: {}, metadata: {} },
  };
  t.match(
    toTimelineLine(invalid),
    /^\s+13\s+2025-05-01T12:00:02.000Z\s+ToolPaused\s+\?\s+\?\s+INVALID ToolPaused x: does not match its schema\n$/,
  );
  t.match(JSON.parse(toNdjson(invalid)), {
    revision: 13,
    invalid: /does not match/,
    raw: { type: 'ToolPaused' },
  });
});

t.test(
  'configuration: the signing key has no default; the HTTP service also needs a token key',
  async (t) => {
    const AUDIT_SIGNING_KEY = randomBytes(32).toString('hex');
    const config = loadAuditorConfig({ AUDIT_SIGNING_KEY });
    t.equal(config.AUDITOR_PORT, 8083);
    t.equal(
      loadAuditorConfig({ AUDIT_SIGNING_KEY, AUDITOR_PORT: '9000', AUDITOR_ID: 'ida' }).AUDITOR_PORT,
      9000,
    );
    t.throws(() => loadAuditorConfig({ AUDIT_SIGNING_KEY: 'short' }), ConfigError);
    t.throws(() => loadAuditorConfig({ AUDIT_SIGNING_KEY, AUDITOR_PORT: '80x' }), ConfigError);
    t.throws(() => loadAuditorConfig({}), { message: /AUDIT_SIGNING_KEY: must be set/ });
    t.throws(() => loadAuditorServerConfig({ AUDIT_SIGNING_KEY }), { message: /JWT_SECRET: must be set/ });
    const server = loadAuditorServerConfig({ AUDIT_SIGNING_KEY, JWKS_URL: 'https://id.example/jwks' });
    t.equal(server.JWKS_URL, 'https://id.example/jwks', 'a key set instead of a JWT secret');
  },
);
