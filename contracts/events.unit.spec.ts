import t from 'tap';
import {
  EVENT_TYPES,
  GENESIS_HASH,
  isTerminal,
  SCHEMA_VERSION,
  ToolApprovalRequested,
  ToolApproved,
  ToolCancelRequested,
  ToolCompleted,
  ToolDenied,
  ToolEvent,
  ToolExecuting,
  ToolFailed,
  ToolRequested,
  type ToolEventType,
} from './events.ts';
import { stepOf } from './chain.ts';
import { eventIdFor, executionIdFor } from './ids.ts';

const executionId = executionIdFor('alice', 'req-1');

const DATA: Record<ToolEventType, unknown> = {
  ToolRequested: {
    tool: 'echo',
    version: '1.0.0',
    args: { text: 'hi', nested: [1, { a: null }] },
    redacted: [],
  },
  ToolExecuting: { attempt: 1, runner: 'dispatcher-1', timeoutMs: 5000 },
  ToolCompleted: { result: { echoed: 'hi' }, redacted: ['$.secret'], durationMs: 3.5, cached: false },
  ToolFailed: { error: { code: 'TOOL_ERROR', message: 'boom', details: { line: 3 } }, durationMs: null },
  ToolCancelRequested: {
    by: { userId: 'alice', admin: false },
    reason: 'changed my mind',
    requestedAt: '2025-01-02T03:04:05.000Z',
  },
  ToolApprovalRequested: {
    argsHash: 'cd'.repeat(32),
    approverRoles: ['finance'],
    deadline: '2025-01-02T04:04:05.000Z',
    requesterId: 'alice',
    allowSelfApproval: false,
  },
  ToolApproved: { approverId: 'bob', approverRole: 'finance', argsHash: 'cd'.repeat(32) },
  ToolDenied: { approverId: 'bob', approverRole: 'finance', argsHash: 'cd'.repeat(32), reason: 'too much' },
};

/** A valid envelope of `type`: ids from the id functions, a well-formed (not chained) hash pair. */
function envelope(type: ToolEventType): Record<string, unknown> & { metadata: Record<string, unknown> } {
  return {
    id: eventIdFor(executionId, stepOf({ type, data: DATA[type] } as Parameters<typeof stepOf>[0])),
    type,
    schemaVersion: SCHEMA_VERSION,
    data: structuredClone(DATA[type]),
    metadata: {
      userId: 'alice',
      executionId,
      requestId: 'req-1',
      correlationId: 'corr-1',
      causationId: type === 'ToolRequested' ? null : eventIdFor(executionId, 'requested'),
      occurredAt: '2025-01-02T03:04:05.678Z',
      prevHash: GENESIS_HASH,
      hash: 'ab'.repeat(32),
    },
  };
}

t.test('the four event types of the life cycle and the four that change its course, version 1', async (t) => {
  t.strictSame(
    [...EVENT_TYPES],
    [
      'ToolRequested',
      'ToolExecuting',
      'ToolCompleted',
      'ToolFailed',
      'ToolCancelRequested',
      'ToolApprovalRequested',
      'ToolApproved',
      'ToolDenied',
    ],
  );
  t.equal(SCHEMA_VERSION, 1);
  t.equal(GENESIS_HASH, '0'.repeat(64));
});

t.test('ToolEvent parses a valid envelope of each type, unchanged', async (t) => {
  const own = {
    ToolRequested,
    ToolExecuting,
    ToolCompleted,
    ToolFailed,
    ToolCancelRequested,
    ToolApprovalRequested,
    ToolApproved,
    ToolDenied,
  };
  for (const type of EVENT_TYPES) {
    const e = envelope(type);
    const parsed = ToolEvent.safeParse(e);
    t.ok(parsed.success, `${type} parses`);
    t.strictSame(parsed.data, e, `${type} comes back as it went in`);
    t.ok(own[type].safeParse(e).success, `${type} passes its own schema`);
    for (const other of EVENT_TYPES.filter((o) => o !== type)) {
      t.notOk(own[other].safeParse(e).success, `${type} does not pass the ${other} schema`);
    }
  }
});

t.test('ToolEvent accepts the variations the contract allows', async (t) => {
  const withOffset = envelope('ToolExecuting');
  withOffset.metadata['occurredAt'] = '2025-01-02T05:04:05+02:00';
  t.ok(ToolEvent.safeParse(withOffset).success, 'a timestamp with an offset');

  const unversioned = envelope('ToolRequested');
  (unversioned['data'] as Record<string, unknown>)['version'] = null;
  t.ok(ToolEvent.safeParse(unversioned).success, 'a request without a version (newest)');

  const noRedacted = envelope('ToolRequested');
  delete (noRedacted['data'] as Record<string, unknown>)['redacted'];
  const parsed = ToolEvent.parse(noRedacted);
  t.strictSame((parsed.data as { redacted: string[] }).redacted, [], 'redacted defaults to []');

  const omitted = envelope('ToolRequested');
  Object.assign(omitted['data'] as Record<string, unknown>, {
    args: {},
    argsOmitted: { bytes: 262_000, sha256: 'ef'.repeat(32) },
  });
  t.strictSame(ToolEvent.parse(omitted), omitted, 'a request whose arguments were not stored (a refusal)');
  for (const bad of [{ bytes: -1, sha256: 'ef'.repeat(32) }, { bytes: 2, sha256: 'x' }, { bytes: 2 }]) {
    (omitted['data'] as Record<string, unknown>)['argsOmitted'] = bad;
    t.notOk(ToolEvent.safeParse(omitted).success, `not argsOmitted ${JSON.stringify(bad)}`);
  }

  const scalarResult = envelope('ToolCompleted');
  (scalarResult['data'] as Record<string, unknown>)['result'] = null;
  t.ok(ToolEvent.safeParse(scalarResult).success, 'a null result');
});

type Mutation = [string, (e: ReturnType<typeof envelope>) => void];
const data = (e: ReturnType<typeof envelope>) => e['data'] as Record<string, unknown>;

const REFUSED: Array<[ToolEventType, ...Mutation]> = [
  ['ToolRequested', 'an unknown type', (e) => (e['type'] = 'ToolCancelled')],
  ['ToolRequested', 'no type', (e) => delete e['type']],
  ['ToolRequested', 'schemaVersion 2', (e) => (e['schemaVersion'] = 2)],
  ['ToolCompleted', 'schemaVersion "1"', (e) => (e['schemaVersion'] = '1')],
  ['ToolExecuting', 'an uppercase hash', (e) => (e.metadata['hash'] = 'AB'.repeat(32))],
  ['ToolExecuting', 'a short hash', (e) => (e.metadata['hash'] = 'ab'.repeat(31))],
  ['ToolExecuting', 'a non-hex prevHash', (e) => (e.metadata['prevHash'] = 'zz'.repeat(32))],
  ['ToolFailed', 'no hash', (e) => delete e.metadata['hash']],
  ['ToolRequested', 'an extra top-level key', (e) => (e['extra'] = 1)],
  ['ToolRequested', 'an extra metadata key', (e) => (e.metadata['tenant'] = 'x')],
  ['ToolRequested', 'an extra data key', (e) => (data(e)['extra'] = 1)],
  ['ToolCompleted', 'an extra data key', (e) => (data(e)['extra'] = 1)],
  ['ToolExecuting', 'an extra data key', (e) => (data(e)['extra'] = 1)],
  ['ToolFailed', 'an extra data key', (e) => (data(e)['extra'] = 1)],
  [
    'ToolFailed',
    'an extra key in the error',
    (e) => ((data(e)['error'] as Record<string, unknown>)['stack'] = 'x'),
  ],
  ['ToolRequested', 'an id that is not a UUID', (e) => (e['id'] = 'event-1')],
  ['ToolRequested', 'an execution id that is not a UUID', (e) => (e.metadata['executionId'] = 'x')],
  ['ToolRequested', 'a bad user id', (e) => (e.metadata['userId'] = 'a.b')],
  ['ToolRequested', 'a bad request id', (e) => (e.metadata['requestId'] = 'has space')],
  ['ToolRequested', 'an empty correlation id', (e) => (e.metadata['correlationId'] = '')],
  ['ToolRequested', 'a timestamp that is not ISO', (e) => (e.metadata['occurredAt'] = '2025-01-02 03:04:05')],
  ['ToolRequested', 'a date only', (e) => (e.metadata['occurredAt'] = '2025-01-02')],
  ['ToolRequested', 'args that are an array', (e) => (data(e)['args'] = [1])],
  ['ToolRequested', 'no tool', (e) => delete data(e)['tool']],
  ['ToolExecuting', 'attempt 0', (e) => (data(e)['attempt'] = 0)],
  ['ToolExecuting', 'a fractional attempt', (e) => (data(e)['attempt'] = 1.5)],
  ['ToolExecuting', 'timeout 0', (e) => (data(e)['timeoutMs'] = 0)],
  ['ToolCompleted', 'a non-finite result', (e) => (data(e)['result'] = Number.NaN)],
  ['ToolCompleted', 'a negative duration', (e) => (data(e)['durationMs'] = -1)],
  ['ToolCompleted', 'cached missing', (e) => delete data(e)['cached']],
  ['ToolCancelRequested', 'no requester', (e) => delete data(e)['by']],
  ['ToolCancelRequested', 'a requester without the admin flag', (e) => (data(e)['by'] = { userId: 'alice' })],
  ['ToolCancelRequested', 'a requestedAt that is not ISO', (e) => (data(e)['requestedAt'] = 'now')],
  ['ToolApprovalRequested', 'no approver role', (e) => (data(e)['approverRoles'] = [])],
  ['ToolApprovalRequested', 'an argsHash that is not SHA-256 hex', (e) => (data(e)['argsHash'] = 'abc')],
  ['ToolApprovalRequested', 'a deadline that is not ISO', (e) => (data(e)['deadline'] = 'tomorrow')],
  ['ToolApprovalRequested', 'no self-approval flag', (e) => delete data(e)['allowSelfApproval']],
  ['ToolApproved', 'no approver role', (e) => delete data(e)['approverRole']],
  ['ToolApproved', 'a bad approver id', (e) => (data(e)['approverId'] = 'a b')],
  ['ToolDenied', 'no reason', (e) => delete data(e)['reason']],
  ['ToolDenied', 'no argsHash', (e) => delete data(e)['argsHash']],
  [
    'ToolFailed',
    'an unknown error code',
    (e) => ((data(e)['error'] as Record<string, unknown>)['code'] = 'OOPS'),
  ],
  [
    'ToolFailed',
    'a refusal code (never stored)',
    (e) => ((data(e)['error'] as Record<string, unknown>)['code'] = 'MALFORMED'),
  ],
  [
    'ToolFailed',
    'completed data under a failed type',
    (e) => (e['data'] = structuredClone(DATA.ToolCompleted)),
  ],
];

t.test('ToolEvent refuses malformed envelopes', async (t) => {
  for (const [type, what, mutate] of REFUSED) {
    const e = envelope(type);
    t.ok(ToolEvent.safeParse(e).success, `baseline ${type} is valid`);
    mutate(e);
    t.notOk(ToolEvent.safeParse(e).success, `${type} with ${what} is refused`);
  }
  t.notOk(ToolEvent.safeParse(null).success, 'null');
  t.notOk(ToolEvent.safeParse('ToolRequested').success, 'a string');
});

t.test('isTerminal', async (t) => {
  t.strictSame(
    EVENT_TYPES.filter((type) => isTerminal(type)),
    ['ToolCompleted', 'ToolFailed'],
  );
  t.notOk(isTerminal('toolcompleted'));
  t.notOk(isTerminal(''));
});
