import { isDeepStrictEqual } from 'node:util';
import {
  answerFromTerminal,
  eventIdFor,
  executionIdFor,
  isTerminal,
  USER_STREAM_PREFIX,
  userIdOfStream,
  verifyChain,
  type ToolEvent,
} from '../../contracts/index.ts';
import type { Pool } from '../../lib/db.ts';
import type { EventStore, RecordedEvent } from '../../lib/eventstore/types.ts';
import { fromRecorded } from '../../lib/toolEvents.ts';
import { compareWithReplay } from '../../services/projector/replay.ts';
import { sleep, type Tap } from './harness.ts';
import { UNRECORDED_CODES, type Ledger, type LedgerEntry } from './load.ts';
import type { Received, Watcher } from './watchers.ts';

/**
 * The one checker every fault test ends with. After the fault and the load, it reads the whole
 * event store and holds the system to what it promises:
 *
 * - every request that was acknowledged (got a terminal answer) has exactly one terminal event
 *   in its user's stream, and the answer is the one that event stands for; every answer to the
 *   same request id is the same;
 * - a refusal answered without a record (UNAUTHENTICATED, MALFORMED) left nothing in the stream;
 * - no event appears twice: event ids are unique, and each is the deterministic id of its step;
 * - every user stream's revisions are contiguous from 0, its hash chain verifies, every event
 *   parses, belongs to the stream's user, and each execution follows the life cycle
 *   (requested -> executing* -> one terminal, nothing after it);
 * - no execution appears that no agent of that user asked for (nothing crossed users);
 * - the read models equal a replay of the events, once the projector has caught up;
 * - every WebSocket client ends with every event of its user, in order, each once, and none of
 *   another user's.
 *
 * The rules are pure functions (`checkHistories`, `checkDelivery`) over what was read, so
 * checker.unit.spec.ts can show each one failing.
 */

export type Rule =
  | 'parse'
  | 'revisions'
  | 'unique-ids'
  | 'ownership'
  | 'deterministic-ids'
  | 'lifecycle'
  | 'chain'
  | 'acknowledged'
  | 'answer-agrees'
  | 'answers-consistent'
  | 'unrecorded'
  | 'strangers'
  | 'unanswered'
  | 'delivery';

export interface Violation {
  rule: Rule;
  message: string;
}

export const RULES: Record<Rule, string> = {
  parse: 'every stored event is a valid ToolEvent',
  revisions: "every user stream's revisions are contiguous from 0",
  'unique-ids': 'no event id appears twice',
  ownership: "every event belongs to its stream's user (no event crossed users)",
  'deterministic-ids': 'each event id is the deterministic id of its execution step',
  lifecycle: 'each execution is requested, executing (attempts 1..n), then at most one terminal event',
  chain: "every user stream's hash chain verifies",
  acknowledged: 'every acknowledged request has exactly one terminal event in its user stream',
  'answer-agrees': 'every answer is the one its terminal event stands for',
  'answers-consistent': 'every answer to the same request id is the same',
  unrecorded: 'a refusal answered without a record left nothing in the stream',
  strangers: 'every recorded execution was asked for by an agent of that user',
  unanswered: 'every request the agents sent was answered in the end',
  delivery: 'every WebSocket client got every event of its user, in order, once, and nothing else',
};

/** The terminal answer a stored terminal event stands for (contracts/services.ts, as dispatchers answer). */
export const answerOf = answerFromTerminal;

const short = (v: unknown) => {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 300 ? `${s.slice(0, 300)}…` : s;
};

export interface HistoryOptions {
  /** Every answered request must have been answered (default true). */
  requireAllAnswered?: boolean;
  /**
   * Every recorded execution must be one the ledger knows for that user (default true); or only
   * in the streams of the users listed (a fuzzer's own stream may hold requests it cannot name).
   */
  strangers?: boolean | string[];
}

/**
 * The rules over the store: `streams` maps each user stream name to its events in revision order
 * (as read), `entries` is what the agents sent and were answered.
 */
export function checkHistories(
  streams: Map<string, RecordedEvent[]>,
  entries: LedgerEntry[],
  options: HistoryOptions = {},
): Violation[] {
  const out: Violation[] = [];
  const v = (rule: Rule, message: string) => out.push({ rule, message });
  const seenIds = new Map<string, string>();
  /** executionId -> its parsed events, per user. */
  const executions = new Map<string, { userId: string; requestId: string; events: ToolEvent[] }>();

  for (const [stream, recorded] of streams) {
    const userId = userIdOfStream(stream);
    if (!userId) continue;
    const parsed: ToolEvent[] = [];
    recorded.forEach((r, i) => {
      if (r.revision !== i) v('revisions', `${stream}: event ${i} has revision ${r.revision}`);
      const where = `${stream}@${r.revision}`;
      const other = seenIds.get(r.id);
      if (other) v('unique-ids', `event id ${r.id} at ${where} and at ${other}`);
      else seenIds.set(r.id, where);
      const p = fromRecorded(r);
      if (!p.ok) {
        const owner = (r.metadata as { userId?: unknown } | null)?.userId;
        if (owner !== userId) v('ownership', `${where}: an event of user ${String(owner)} in ${stream}`);
        else v('parse', `${where}: ${p.reason}`);
        return;
      }
      const e = p.event;
      parsed.push(e);
      if (e.metadata.userId !== userId) {
        v('ownership', `${where}: an event of user ${e.metadata.userId} in ${stream}`);
        return;
      }
      if (e.metadata.executionId !== executionIdFor(userId, e.metadata.requestId)) {
        v(
          'ownership',
          `${where}: execution ${e.metadata.executionId} is not ${userId}'s request ${e.metadata.requestId}`,
        );
        return;
      }
      const step =
        e.type === 'ToolRequested'
          ? 'requested'
          : e.type === 'ToolExecuting'
            ? (`executing:${e.data.attempt}` as const)
            : 'terminal';
      if (e.id !== eventIdFor(e.metadata.executionId, step)) {
        v('deterministic-ids', `${where}: ${e.type} ${e.id} is not the id of step ${step}`);
      }
      let x = executions.get(e.metadata.executionId);
      if (!x) {
        x = { userId, requestId: e.metadata.requestId, events: [] };
        executions.set(e.metadata.executionId, x);
      }
      x.events.push(e);
    });
    const broken = verifyChain(parsed);
    if (broken) v('chain', `${stream}: event ${broken.index} (${broken.eventId}): ${broken.problem}`);
  }

  for (const [executionId, x] of executions) {
    const types = x.events.map((e) =>
      e.type === 'ToolExecuting' ? `ToolExecuting:${e.data.attempt}` : e.type,
    );
    const problem = lifecycleProblem(x.events);
    if (problem)
      v('lifecycle', `${x.userId}/${x.requestId} (${executionId}): ${problem}: ${types.join(' ')}`);
  }

  const known = new Set<string>();
  for (const entry of entries) {
    const executionId = executionIdFor(entry.userId, entry.requestId);
    known.add(executionId);
    const label = `${entry.userId}/${entry.requestId} (${entry.tool})`;
    const first = entry.answers[0];
    if (!first) {
      if (!entry.raw && options.requireAllAnswered !== false) {
        v('unanswered', `${label}: no answer after ${entry.attempts} attempt(s): ${entry.lastError ?? ''}`);
      }
      continue;
    }
    entry.answers.forEach((a, i) => {
      if (i > 0 && !isDeepStrictEqual(a, first)) {
        v('answers-consistent', `${label}: answer ${i} ${short(a)} differs from the first ${short(first)}`);
      }
    });
    const events = executions.get(executionId)?.events ?? [];
    if (first.status === 'failed' && UNRECORDED_CODES.has(first.error.code)) {
      if (first.error.code !== 'OVERLOADED' && events.length > 0) {
        v('unrecorded', `${label}: answered ${first.error.code} but ${events.length} event(s) are stored`);
      }
      continue;
    }
    const terminals = events.filter((e) => isTerminal(e.type));
    if (terminals.length !== 1) {
      v(
        'acknowledged',
        `${label}: answered ${first.status === 'completed' ? 'completed' : first.error.code} but ${terminals.length} terminal events are stored`,
      );
      continue;
    }
    const expected = answerOf(terminals[0]!);
    if (!isDeepStrictEqual(first, expected)) {
      v('answer-agrees', `${label}: answered ${short(first)} but the stream says ${short(expected)}`);
    }
  }

  if (options.strangers !== false) {
    const only = Array.isArray(options.strangers) ? new Set(options.strangers) : null;
    for (const [executionId, x] of executions) {
      if (only && !only.has(x.userId)) continue;
      if (!known.has(executionId)) {
        v(
          'strangers',
          `${x.userId}/${x.requestId} (${executionId}) was recorded but no agent of ${x.userId} sent it`,
        );
      }
    }
  }
  return out;
}

/** Why an execution's events break the life cycle, or null. */
export function lifecycleProblem(events: ToolEvent[]): string | null {
  if (events.length === 0) return 'no events';
  if (events[0]!.type !== 'ToolRequested') return 'does not start with ToolRequested';
  let attempt = 0;
  let ended = false;
  for (const e of events.slice(1)) {
    if (ended) return `${e.type} after the terminal event`;
    switch (e.type) {
      case 'ToolRequested':
        return 'ToolRequested twice';
      case 'ToolExecuting':
        if (e.data.attempt !== attempt + 1) return `attempt ${e.data.attempt} after attempt ${attempt}`;
        attempt = e.data.attempt;
        break;
      case 'ToolCompleted':
        if (attempt === 0) return 'completed without running';
        ended = true;
        break;
      case 'ToolFailed':
        ended = true;
        break;
    }
  }
  return null;
}

/**
 * What one WebSocket client received over all its connections against the user's stored events
 * (in revision order): exactly those, in order, each once, all of that user.
 */
export function checkDelivery(
  userId: string,
  received: Received[],
  stored: ToolEvent[],
  invalid: string[] = [],
): Violation[] {
  const out: Violation[] = [];
  const v = (message: string) => out.push({ rule: 'delivery', message: `${userId}: ${message}` });
  for (const bad of invalid.slice(0, 5)) v(`not a valid notification of this user: ${bad}`);
  const foreign = received.filter((r) => r.userId !== userId || r.event.metadata.userId !== userId);
  if (foreign.length > 0)
    v(`${foreign.length} event(s) of another user, e.g. ${short(foreign[0]!.event.metadata)}`);
  const revisions = received.map((r) => r.revision);
  const seen = new Set<number>();
  const dupes = revisions.filter((r) => (seen.has(r) ? true : (seen.add(r), false)));
  if (dupes.length > 0) v(`revisions received more than once: ${dupes.slice(0, 10).join(',')}`);
  const outOfOrder = revisions.findIndex((r, i) => i > 0 && r <= revisions[i - 1]!);
  if (outOfOrder > 0) v(`revision ${revisions[outOfOrder]} came after ${revisions[outOfOrder - 1]}`);
  const missing: number[] = [];
  stored.forEach((e, i) => {
    const got = received.find((r) => r.revision === i);
    if (!got) missing.push(i);
    else if (!isDeepStrictEqual(got.event, e)) v(`revision ${i} is ${got.event.id}, the store has ${e.id}`);
  });
  if (missing.length > 0) {
    v(
      `${missing.length} of ${stored.length} events never arrived (revisions ${missing.slice(0, 10).join(',')}${missing.length > 10 ? '…' : ''})`,
    );
  }
  const beyond = revisions.filter((r) => r >= stored.length);
  if (beyond.length > 0)
    v(`revisions ${beyond.slice(0, 5).join(',')} are not in the store (it has ${stored.length})`);
  return out;
}

/**
 * Every user stream of the store, in revision order, with every committed event. The global read
 * only names the streams: it stops at the visibility horizon (an older transaction still open
 * anywhere on the server, such as another test's, hides what committed after it began), while a
 * stream read returns every committed event of its stream.
 */
export async function readStreams(store: EventStore): Promise<Map<string, RecordedEvent[]>> {
  const names = new Set<string>();
  for await (const e of store.readAll()) {
    if (e.streamId.startsWith(USER_STREAM_PREFIX)) names.add(e.streamId);
  }
  const streams = new Map<string, RecordedEvent[]>();
  for (const name of names) {
    const list: RecordedEvent[] = [];
    for await (const e of store.readStream(name)) list.push(e);
    streams.set(name, list);
  }
  return streams;
}

const countEvents = (streams: Map<string, RecordedEvent[]>) =>
  [...streams.values()].reduce((n, l) => n + l.length, 0);

export interface CheckOptions {
  store: EventStore;
  /** The read models' database; omit when the test runs no projector. */
  pool?: Pool;
  ledger: Ledger;
  watchers?: Watcher[];
  requireAllAnswered?: boolean;
  strangers?: boolean | string[];
  /**
   * Rules a known bug breaks in this test, with the reason: their assertion is still made and
   * shown, as tap's `todo`, so it neither hides nor fails the run.
   */
  todo?: Partial<Record<Rule, string>>;
  /** How long to wait for the store to settle, the projector and the clients to catch up (default 60 s). */
  timeoutMs?: number;
}

export interface CheckReport {
  events: number;
  streams: number;
  executions: number;
  outcomes: Record<string, number>;
  violations: Violation[];
}

/**
 * Waits for the system to settle (no new events for 2 s, the projector caught up, every client
 * caught up), then applies every rule, one assertion per rule, in a subtest named `checker`.
 */
export async function checkNothingLost(t: Tap, o: CheckOptions): Promise<CheckReport> {
  const timeoutMs = o.timeoutMs ?? 60_000;
  const report: CheckReport = {
    events: 0,
    streams: 0,
    executions: 0,
    outcomes: o.ledger.summary(),
    violations: [],
  };
  await t.test('checker: nothing acknowledged was lost', async (t) => {
    const deadline = Date.now() + timeoutMs;

    // 1. The store settles: whatever was still running (a redelivery, a deferred duplicate) ends.
    let streams = await readStreams(o.store);
    for (let stableSince = Date.now(); Date.now() - stableSince < 2_000 && Date.now() < deadline;) {
      await sleep(250);
      const again = await readStreams(o.store);
      if (countEvents(again) !== countEvents(streams)) stableSince = Date.now();
      streams = again;
    }

    // 2. Every client caught up with its user's stream (the tail check runs every few seconds).
    const watchers = o.watchers ?? [];
    const storedOf = (userId: string): ToolEvent[] =>
      (streams.get(`${USER_STREAM_PREFIX}${userId}`) ?? []).flatMap((r) => {
        const p = fromRecorded(r);
        return p.ok ? [p.event] : [];
      });
    const behind = (w: Watcher) =>
      w.received.reduce((max, r) => Math.max(max, r.revision), -1) < storedOf(w.user.userId).length - 1;
    while (Date.now() < deadline && watchers.some(behind)) {
      await sleep(250);
    }

    // 3. The projector caught up: the models at their checkpoint equal a replay up to there, and
    // the checkpoint covers every event.
    const total = countEvents(streams);
    let comparison: Awaited<ReturnType<typeof compareWithReplay>> | null = null;
    if (o.pool) {
      for (;;) {
        try {
          comparison = await compareWithReplay(o.pool, o.store);
          if (comparison.equal && comparison.replayedEvents >= total) break;
        } catch (e) {
          t.comment(`comparing read models failed (retrying): ${(e as Error).message}`);
        }
        if (Date.now() > deadline) break;
        await sleep(500);
      }
    }

    const violations = [
      ...checkHistories(streams, o.ledger.all(), {
        requireAllAnswered: o.requireAllAnswered ?? true,
        strangers: o.strangers ?? true,
      }),
      ...watchers.flatMap((w) =>
        checkDelivery(w.user.userId, w.received, storedOf(w.user.userId), w.invalid),
      ),
    ];
    report.violations = violations;
    report.events = total;
    report.streams = streams.size;
    report.executions = new Set(
      [...streams.values()].flat().map((r) => (r.metadata as { executionId?: string }).executionId),
    ).size;

    for (const [rule, description] of Object.entries(RULES) as Array<[Rule, string]>) {
      const found = violations.filter((x) => x.rule === rule).map((x) => x.message);
      const todo = o.todo?.[rule];
      t.strictSame(
        found.slice(0, 20),
        [],
        `${description}${found.length > 20 ? ` (${found.length} in all)` : ''}`,
        todo ? { todo } : {},
      );
    }
    if (o.pool) {
      t.ok(
        comparison?.equal === true && comparison.replayedEvents >= total,
        `the read models equal a replay of all ${total} events (checkpoint ${comparison?.position}, ${comparison?.replayedEvents} replayed)`,
      );
      if (comparison && !comparison.equal) t.comment(comparison.differences.slice(0, 20).join('\n'));
    }
    t.comment(
      `${total} events in ${streams.size} streams, ${report.executions} executions; answers ${JSON.stringify(report.outcomes)}; ` +
        `clients: ${watchers.map((w) => `${w.user.userId} ${w.received.length} events over ${w.connections} connection(s)`).join(', ')}`,
    );
  });
  return report;
}
