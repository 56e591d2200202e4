import t from 'tap';
import { chainEvents } from './chain.ts';
import { EVENT_TYPES, GENESIS_HASH, type ToolEvent } from './events.ts';
import { eventIdFor, executionIdFor } from './ids.ts';
import { ClientMessage, CLOSE_CODES, Notification, notificationName } from './notification.ts';

const executionId = executionIdFor('alice', 'req-1');
const [event] = chainEvents<ToolEvent>([
  {
    id: eventIdFor(executionId, 'requested'),
    type: 'ToolRequested',
    schemaVersion: 1,
    data: { tool: 'echo', version: null, args: {}, redacted: [] },
    metadata: {
      userId: 'alice',
      executionId,
      requestId: 'req-1',
      correlationId: 'c1',
      causationId: null,
      occurredAt: '2025-01-01T00:00:00.000Z',
      prevHash: GENESIS_HASH,
    },
  },
]);

t.test('notificationName maps each event type to its frontend name', async (t) => {
  t.strictSame(
    EVENT_TYPES.map((type) => notificationName(type)),
    [
      'tool_requested',
      'tool_executing',
      'tool_completed',
      'tool_failed',
      'tool_cancel_requested',
      'tool_approval_requested',
      'tool_approved',
      'tool_denied',
    ],
  );
  for (const type of EVENT_TYPES) {
    t.ok(
      Notification.safeParse({
        kind: 'event',
        name: notificationName(type),
        userId: 'alice',
        revision: 0,
        event,
      }).success,
      `${type}: a name the Notification schema accepts`,
    );
  }
});

t.test('Notification parses every kind', async (t) => {
  const valid: unknown[] = [
    { kind: 'event', name: 'tool_requested', userId: 'alice', revision: 0, event },
    { kind: 'progress', userId: 'alice', executionId, correlationId: 'c1', fraction: 0 },
    { kind: 'progress', userId: 'alice', executionId, correlationId: 'c1', fraction: 1, message: 'done' },
    { kind: 'ready', userId: 'alice', revision: 41 },
    { kind: 'ready', userId: 'alice', revision: -1 },
    { kind: 'ready', userId: '*', revision: null },
    { kind: 'error', code: 'FORBIDDEN', message: 'not yours' },
  ];
  for (const n of valid) {
    const parsed = Notification.safeParse(n);
    t.ok(parsed.success, JSON.stringify(n).slice(0, 80));
    t.strictSame(parsed.data, n);
  }
});

t.test('Notification refuses', async (t) => {
  const ev = { kind: 'event', name: 'tool_requested', userId: 'alice', revision: 0, event };
  const cases: Array<[string, unknown]> = [
    ['an unknown kind', { kind: 'hello' }],
    ['no kind', { code: 'x', message: 'y' }],
    ['an unknown event name', { ...ev, name: 'ToolRequested' }],
    ['a negative revision', { ...ev, revision: -1 }],
    ['a fractional revision', { ...ev, revision: 1.5 }],
    ['a user id with a wildcard on an event', { ...ev, userId: '*' }],
    ['a user id with a dot', { ...ev, userId: 'a.b' }],
    ['an invalid event', { ...ev, event: { ...event, type: 'ToolCancelled' } }],
    ['an extra key', { ...ev, seq: 1 }],
    [
      'a fraction above 1',
      { kind: 'progress', userId: 'alice', executionId, correlationId: 'c', fraction: 1.01 },
    ],
    [
      'a negative fraction',
      { kind: 'progress', userId: 'alice', executionId, correlationId: 'c', fraction: -0.1 },
    ],
    [
      'a progress message over 500',
      {
        kind: 'progress',
        userId: 'alice',
        executionId,
        correlationId: 'c',
        fraction: 0,
        message: 'm'.repeat(501),
      },
    ],
    ['a ready revision below -1', { kind: 'ready', userId: 'alice', revision: -2 }],
    ['a ready without revision', { kind: 'ready', userId: 'alice' }],
    ['an error without message', { kind: 'error', code: 'x' }],
  ];
  for (const [what, n] of cases) t.notOk(Notification.safeParse(n).success, what);
});

t.test('ClientMessage', async (t) => {
  const valid: unknown[] = [
    { type: 'auth', token: 'eyJ.x.y' },
    { type: 'subscribe' },
    { type: 'subscribe', afterRevision: -1 },
    { type: 'subscribe', userId: 'bob', afterRevision: 17 },
    { type: 'ping' },
  ];
  for (const m of valid) t.strictSame(ClientMessage.parse(m), m, JSON.stringify(m));
  const cases: Array<[string, unknown]> = [
    ['an unknown type', { type: 'unsubscribe' }],
    ['no type', { token: 'x' }],
    ['an empty token', { type: 'auth', token: '' }],
    ['a token over 8192', { type: 'auth', token: 't'.repeat(8193) }],
    ['afterRevision -2', { type: 'subscribe', afterRevision: -2 }],
    ['a fractional afterRevision', { type: 'subscribe', afterRevision: 0.5 }],
    ['afterRevision as a string', { type: 'subscribe', afterRevision: '3' }],
    ['a wildcard user id', { type: 'subscribe', userId: '>' }],
    ['a user id with a dot', { type: 'subscribe', userId: 'a.b' }],
    ['an extra key on ping', { type: 'ping', at: 1 }],
    ['a string', 'ping'],
    ['null', null],
  ];
  for (const [what, m] of cases) t.notOk(ClientMessage.safeParse(m).success, what);
});

t.test('application close codes are in the 4000-4999 range, protocol ones are standard', async (t) => {
  const { goingAway, tooBig, internalError, ...own } = CLOSE_CODES;
  for (const [name, code] of Object.entries(own)) t.ok(code >= 4000 && code <= 4999, `${name} ${code}`);
  t.equal(goingAway, 1001);
  t.equal(tooBig, 1009);
  t.equal(internalError, 1011);
  t.equal(new Set(Object.values(CLOSE_CODES)).size, Object.keys(CLOSE_CODES).length, 'all distinct');
});
