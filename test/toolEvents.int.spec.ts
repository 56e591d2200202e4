/**
 * lib/toolEvents.ts against a real store: what goes in is checked against the ToolEvent schemas,
 * what comes out is the same envelope (hash chain intact), and what cannot be read back says why.
 */
import { randomUUID } from 'node:crypto';
import t from 'tap';
import {
  chainEvents,
  eventIdFor,
  executionIdFor,
  userStream,
  verifyChain,
  type ToolEvent,
} from '../contracts/index.ts';
import { createPostgresEventStore } from '../lib/eventstore/postgres.ts';
import { InvalidEventError, type EventData } from '../lib/eventstore/types.ts';
import { fromRecorded, toEventData } from '../lib/toolEvents.ts';
import { collect } from './conformance/eventstore.ts';
import { createTestDatabase } from './support/postgres.ts';

const db = await createTestDatabase(t);
const store = await createPostgresEventStore({ connectionString: db.url });
t.teardown(() => store.close());

/** One execution of `userId` as the dispatcher records it: requested, executing, then `last`. */
function execution(userId: string, last: 'completed' | 'failed' = 'completed'): ToolEvent[] {
  const requestId = `req-${randomUUID()}`;
  const executionId = executionIdFor(userId, requestId);
  const metadata = (causationId: string | null, ms: number) => ({
    userId,
    executionId,
    requestId,
    correlationId: executionId,
    causationId,
    occurredAt: new Date(Date.UTC(2025, 0, 2, 3, 4, 5, ms)).toISOString(),
    prevHash: '0'.repeat(64),
  });
  const requested = eventIdFor(executionId, 'requested');
  const executing = eventIdFor(executionId, 'executing:1');
  const terminal = eventIdFor(executionId, 'terminal');
  return chainEvents<ToolEvent>([
    {
      id: requested,
      type: 'ToolRequested',
      schemaVersion: 1,
      data: {
        tool: 'echo',
        version: '1.0.0',
        args: { text: 'héllo ✓', nested: { list: [1, 2.5, null] } },
        redacted: [],
      },
      metadata: metadata(requestId, 0),
    },
    {
      id: executing,
      type: 'ToolExecuting',
      schemaVersion: 1,
      data: { attempt: 1, runner: 'dispatcher-1', timeoutMs: 5000 },
      metadata: metadata(requested, 1),
    },
    last === 'completed'
      ? {
          id: terminal,
          type: 'ToolCompleted',
          schemaVersion: 1,
          data: {
            result: { echoed: 'héllo ✓', z: 1, a: [true] },
            redacted: [],
            durationMs: 12.5,
            cached: false,
          },
          metadata: metadata(executing, 13),
        }
      : {
          id: terminal,
          type: 'ToolFailed',
          schemaVersion: 1,
          data: {
            error: { code: 'TIMEOUT', message: 'took longer than 5000 ms', details: { limitMs: 5000 } },
            durationMs: 5000,
          },
          metadata: metadata(executing, 14),
        },
  ] as never);
}

t.test('a valid envelope round trips through append, readStream and fromRecorded', async (t) => {
  for (const last of ['completed', 'failed'] as const) {
    const userId = `u${randomUUID().slice(0, 8)}`;
    const events = execution(userId, last);
    const r = await store.append(userStream(userId), events.map(toEventData), 'no_stream');
    t.equal(r.nextRevision, 2);
    const stored = await collect(store.readStream(userStream(userId)));
    const parsed = stored.map(fromRecorded);
    const back: ToolEvent[] = [];
    for (const [i, p] of parsed.entries()) {
      if (!p.ok) {
        t.fail(`event ${i} could not be read back: ${p.reason}`);
        continue;
      }
      t.equal(p.userId, userId, `${p.event.type}: the user`);
      t.equal(p.revision, i, `${p.event.type}: its revision`);
      back.push(p.event);
    }
    t.strictSame(back, events, `${last}: the same envelopes come back`);
    t.equal(verifyChain(back), null, `${last}: the hash chain still verifies after the round trip`);
    t.strictSame(
      stored.map((e) => (e.metadata as { schemaVersion?: unknown }).schemaVersion),
      [1, 1, 1],
      'the schema version is stored in the metadata',
    );
  }
});

t.test(
  'an event that fails its schema is refused with a clear error before anything is written',
  async (t) => {
    const userId = `u${randomUUID().slice(0, 8)}`;
    const stream = userStream(userId);
    const [requested, executing, completed] = execution(userId) as [ToolEvent, ToolEvent, ToolEvent];
    type Broken = { label: string; event: unknown; mentions: string };
    const broken: Broken[] = [
      {
        label: 'attempt 0',
        event: { ...executing, data: { ...executing.data, attempt: 0 } },
        mentions: 'attempt',
      },
      {
        label: 'a request without a tool name',
        event: { ...requested, data: { ...requested.data, tool: undefined } },
        mentions: 'tool',
      },
      {
        label: 'a field the schema does not have',
        event: { ...completed, data: { ...completed.data, secret: 'should not be stored' } },
        mentions: 'secret',
      },
      {
        label: 'an unknown error code',
        event: {
          ...completed,
          type: 'ToolFailed',
          data: { error: { code: 'OOPS', message: 'x' }, durationMs: 1 },
        },
        mentions: 'code',
      },
      {
        label: 'metadata without a user',
        event: { ...requested, metadata: { ...requested.metadata, userId: undefined } },
        mentions: 'userId',
      },
      {
        label: 'a hash that is not a SHA-256',
        event: { ...requested, metadata: { ...requested.metadata, hash: 'not-a-hash' } },
        mentions: 'hash',
      },
    ];
    for (const { label, event, mentions } of broken) {
      let error: unknown = null;
      try {
        await store.append(stream, [requested, event as ToolEvent].map(toEventData), 'no_stream');
      } catch (e) {
        error = e;
      }
      t.ok(error instanceof InvalidEventError, `${label}: refused with InvalidEventError`);
      const message = error instanceof Error ? error.message : '';
      const { type, id } = event as { type: string; id: string };
      t.ok(
        message.includes(type) && message.includes(id) && message.includes(mentions),
        `${label}: the error names the type, the event and "${mentions}" (${message.split('\n')[0]})`,
      );
    }
    t.equal(await store.streamInfo(stream), null, 'nothing was written, not even the valid event before it');
  },
);

t.test('fromRecorded says why an event cannot be read back', async (t) => {
  const userId = `u${randomUUID().slice(0, 8)}`;
  const stream = userStream(userId);
  const [requested, executing] = execution(userId) as [ToolEvent, ToolEvent];
  const valid = toEventData(requested);
  const raw: EventData[] = [
    { ...toEventData(executing), id: randomUUID(), type: 'ToolExploded' },
    { ...valid, id: randomUUID(), metadata: { ...(valid.metadata as object), schemaVersion: 2 } },
    { ...valid, id: randomUUID(), data: { tool: 'echo' } },
  ];
  await store.append(stream, raw, 'no_stream');
  await store.append('elsewhere-1', [{ ...valid, id: randomUUID() }], 'no_stream');
  const otherUser = `u${randomUUID().slice(0, 8)}`;
  await store.append(userStream(otherUser), [{ ...valid, id: randomUUID() }], 'no_stream');

  const [unknown, newer, bad] = (await collect(store.readStream(stream))).map(fromRecorded);
  const [foreign] = (await collect(store.readStream('elsewhere-1'))).map(fromRecorded);
  const [misfiled] = (await collect(store.readStream(userStream(otherUser)))).map(fromRecorded);

  t.equal(unknown?.ok, false, 'an unknown event type is not read as a ToolEvent');
  t.match(
    unknown?.ok === false && unknown.reason,
    /ToolExploded/,
    `the reason names the type (${reasonOf(unknown)})`,
  );
  t.equal(newer?.ok, false, 'schema version 2 is not read as version 1');
  t.match(reasonOf(newer), /schema version 2 is newer/, `the reason says so (${reasonOf(newer)})`);
  t.equal(bad?.ok, false, 'data that fails its schema is not read');
  t.match(
    reasonOf(bad),
    /does not match its schema: .*version/,
    `the reason names the field (${reasonOf(bad)})`,
  );
  t.equal(foreign?.ok, false, 'an event outside a user stream is not a tool event');
  t.match(reasonOf(foreign), /not a user stream/);
  t.equal(misfiled?.ok, false, "an event naming another user than its stream's is not trusted");
  t.match(reasonOf(misfiled), new RegExp(`names user ${userId} in user-${otherUser}`));
  for (const p of [unknown, newer, bad, foreign, misfiled]) {
    t.ok(p && p.recorded.id.length === 36, 'the recorded event is handed back with the reason');
  }
});

function reasonOf(p: ReturnType<typeof fromRecorded> | undefined): string {
  return p && !p.ok ? p.reason : '(no reason: it was read)';
}
