/**
 * Scenario 9 — the WebSocket life cycle: connect, drop mid-stream, reconnect, resume.
 *
 * Proves, against the running stack: a user's socket that is cut off in the middle of a stream of
 * executions (the client drops the connection; later the notifier itself is stopped and started
 * again), and reconnects with `afterRevision` = the last revision it saw, receives exactly the
 * events it missed — including those written while it (or the notifier) was away — then the live
 * ones: across the three connections every stored event arrives once, in revision order, with no
 * gap; each event carries its execution's correlation id and a causation chain
 * (request → requested → executing → completed); a stopping notifier says so (close 1001); a
 * ticket opens one socket only; ping is answered with pong.
 */
import t from 'tap';
import { CLOSE_CODES, type Notification } from '../../contracts/index.ts';
import type { TerminalAnswer } from '../../lib/clients/agent.ts';
import {
  openClient,
  requestTicket,
  subscribe,
  ticketFor,
  type TestClient,
} from '../../services/notifier/test-client.ts';
import { startTestStack } from '../support/stack.ts';
import { newUserId, terminal, userEvents } from './support.ts';

type EventNote = Extract<Notification, { kind: 'event' }>;

const s = await startTestStack(t);
const userId = newUserId('ws');
const token = await s.token(userId);
const notifier = s.url('notifier');
const answers: TerminalAnswer[] = [];

/** Runs `n` executions one after another, each with its own correlation id. */
async function batch(name: string, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    answers.push(
      terminal(
        await s.agent.execute(
          'echo',
          { batch: name, i },
          { token, correlationId: `flow-${name}-${i}`, requestId: `${name}-${i}` },
        ),
      ),
    );
  }
}
const storedCount = async () => (await userEvents(s.store, userId)).length;
const readyOf = (c: TestClient) =>
  c.received.find((n): n is Extract<Notification, { kind: 'ready' }> => n.kind === 'ready');
const eventsFrom = (c: TestClient, name: string) =>
  c.events().filter((e) => e.event.metadata.requestId.startsWith(`${name}-`));

t.test('drop, reconnect, resume: every event once, in order', async (t) => {
  // 1. Connected: batch A arrives live.
  const first = await subscribe(notifier, token);
  t.equal(readyOf(first)?.revision, -1, 'first connection: empty stream, live from here');
  await batch('A', 10);
  await first.waitFor('batch A', () => eventsFrom(first, 'A').length === 30);

  // 2. Batch B starts; the client drops the connection in the middle of it.
  const b = batch('B', 10);
  await first.waitFor('part of batch B', () => eventsFrom(first, 'B').length >= 6);
  first.ws.terminate();
  await first.closed;
  await b;
  await batch('C', 5); // written while the client is away
  const lastSeen1 = first.revisions().at(-1)!;
  t.ok(
    lastSeen1 < (await storedCount()) - 1,
    `the client saw up to revision ${lastSeen1} of ${(await storedCount()) - 1}`,
  );

  // 3. Reconnect after the last revision seen: the missed events, then live ones (batch D)...
  const second = await subscribe(notifier, token, { afterRevision: lastSeen1 });
  const ready2 = readyOf(second)!;
  t.equal(ready2.revision, (await storedCount()) - 1, 'the replay goes up to the end of the stream');
  t.equal(second.revisions()[0], lastSeen1 + 1, 'and starts right after the last revision seen');
  const d = batch('D', 10);
  await second.waitFor('part of batch D', () => eventsFrom(second, 'D').length >= 6);

  // 4. ...until the notifier itself is stopped mid-stream: the socket is told it is going away.
  await s.stack.kill('notifier', 'SIGTERM');
  const closed = await second.closed;
  t.equal(closed.code, CLOSE_CODES.goingAway, 'a stopping notifier closes with 1001 (reconnect and resume)');
  await d;
  await batch('E', 5); // written while the notifier is down
  await s.stack.start('notifier');
  const lastSeen2 = second.revisions().at(-1)!;

  // 5. Resume on the restarted notifier, then live events again (batch F).
  const third = await subscribe(notifier, token, { afterRevision: lastSeen2 });
  t.equal(
    third.revisions()[0],
    lastSeen2 + 1,
    'the restarted notifier resumes right after the last revision seen',
  );
  await batch('F', 5);
  const total = await storedCount();
  await third.waitFor('every event', () => (third.revisions().at(-1) ?? -1) === total - 1, 30_000);
  t.teardown(() => third.ws.close());

  const all = [...first.events(), ...second.events(), ...third.events()];
  t.same(
    all.map((e) => e.revision),
    Array.from({ length: total }, (_, i) => i),
    `over three connections: revisions 0..${total - 1}, each once, in order`,
  );
  const stored = await userEvents(s.store, userId);
  t.same(
    all.map((e) => e.event.id),
    stored.map((e) => e.event.id),
    'exactly the stored events',
  );
  t.equal(total, 45 * 3, '45 executions, 3 events each');

  // Correlation and causation survive the reconnects.
  const byExecution = new Map<string, EventNote[]>();
  for (const e of all)
    byExecution.set(e.event.metadata.executionId, [
      ...(byExecution.get(e.event.metadata.executionId) ?? []),
      e,
    ]);
  const problems: string[] = [];
  for (const a of answers) {
    const notes = byExecution.get(a.executionId!) ?? [];
    const names = notes.map((n) => n.name).join();
    if (names !== 'tool_requested,tool_executing,tool_completed') problems.push(`${a.requestId}: ${names}`);
    if (notes.some((n) => n.event.metadata.correlationId !== a.correlationId))
      problems.push(`${a.requestId}: correlation id differs from the answer's`);
    const [req, exe, done] = notes;
    if (
      req?.event.metadata.causationId !== a.requestId ||
      exe?.event.metadata.causationId !== req?.event.id ||
      done?.event.metadata.causationId !== exe?.event.id
    )
      problems.push(`${a.requestId}: causation chain broken`);
  }
  t.same(
    problems,
    [],
    'each execution: its three events, its correlation id, request → requested → executing → completed',
  );
  t.ok(
    answers.every((a) => a.correlationId?.startsWith('flow-')),
    'each answer kept the correlation id its agent chose',
  );
});

t.test('a ticket opens one socket; ping gets pong', async (t) => {
  const ticket = await ticketFor(notifier, token);
  const one = await openClient(notifier, { ticket });
  t.teardown(() => one.ws.close());
  one.send({ type: 'ping' });
  await one.waitFor('pong', () => one.received.some((n) => n.kind === 'pong'));
  t.pass('ping answered with pong');
  const again = await openClient(notifier, { ticket }).catch((e: unknown) => e);
  if (again instanceof Error) {
    t.pass(`the used ticket is refused (${again.message})`);
  } else {
    const closed = await (again as TestClient).closed;
    t.equal(closed.code, CLOSE_CODES.unauthenticated, 'the used ticket is refused with 4401');
  }
  const noToken = await requestTicket(notifier, null);
  t.equal(noToken.status, 401, 'no ticket without a token');
});
