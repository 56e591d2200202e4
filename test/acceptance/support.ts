import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import pg from 'pg';
import type tap from 'tap';
import { userStream, type ToolEvent } from '../../contracts/index.ts';
import type { TerminalAnswer } from '../../lib/clients/agent.ts';
import { createPool } from '../../lib/db.ts';
import type { EventStore, RecordedEvent } from '../../lib/eventstore/types.ts';
import { fromRecorded } from '../../lib/toolEvents.ts';
import { compareWithReplay, type ReplayComparison } from '../../services/projector/replay.ts';
import type { TestStack } from '../support/stack.ts';
import type { AgentAnswer } from '../../contracts/index.ts';

/**
 * Helpers shared by the acceptance scenarios: reading what the stack recorded (event store,
 * read models, Redis, metrics) the way an operator or a user would see it. No service code is
 * imported for expected values; only the contracts and the stack's own read paths.
 */

type Teardown = { teardown(fn: () => Promise<void> | void): void };

/** A tap test (the `t` a subtest receives). */
export type Tap = Parameters<Parameters<typeof tap.test>[0]>[0];

/** A user id nobody else uses (other scenarios run beside this one on other stacks, but be safe). */
export const newUserId = (prefix: string): string => `${prefix}-${randomUUID().slice(0, 8)}`;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` until it returns true; fails with `what` after `timeoutMs`. */
export async function waitUntil(
  what: string,
  check: () => Promise<boolean> | boolean,
  timeoutMs = 30_000,
  everyMs = 100,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      const why = lastError ? ` (last error: ${(lastError as Error).message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await sleep(everyMs);
  }
}

export interface StoredEvent {
  revision: number;
  event: ToolEvent;
  recorded: RecordedEvent;
}

/** A user's stream as the store holds it, each event parsed back to its contract envelope. */
export async function userEvents(store: EventStore, userId: string): Promise<StoredEvent[]> {
  const out: StoredEvent[] = [];
  for await (const recorded of store.readStream(userStream(userId))) {
    const parsed = fromRecorded(recorded);
    if (!parsed.ok) throw new Error(`unreadable event in ${recorded.streamId}: ${parsed.reason}`);
    out.push({ revision: parsed.revision, event: parsed.event, recorded });
  }
  return out;
}

/** The events of one execution, in stream order. */
export const eventsOf = (events: StoredEvent[], executionId: string): StoredEvent[] =>
  events.filter((e) => e.event.metadata.executionId === executionId);

export const typesOf = (events: StoredEvent[]): string[] => events.map((e) => e.event.type);

/** Narrows an agent answer to a terminal one (the client only resolves with terminal answers). */
export function terminal(answer: AgentAnswer): TerminalAnswer {
  if (answer.status !== 'completed' && answer.status !== 'failed')
    throw new Error(`not a terminal answer: ${JSON.stringify(answer)}`);
  return answer;
}

export interface HttpResult<T = unknown> {
  status: number;
  body: T;
}

/** A GET (or other method) against a service, with a bearer token when given; JSON body when there is one. */
export async function http<T = Record<string, unknown>>(
  url: string,
  options: { token?: string; method?: string; body?: unknown } = {},
): Promise<HttpResult<T>> {
  const headers: Record<string, string> = {};
  if (options.token) headers['authorization'] = `Bearer ${options.token}`;
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(url, {
    method: options.method ?? 'GET',
    headers,
    ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, body: body as T };
}

/** A pool on the stack's database (read models, checkpoint), closed at teardown. */
export function dbPool(t: Teardown, s: TestStack): pg.Pool {
  const pool = createPool(s.db.url, { max: 3, application: 'acceptance-test' });
  t.teardown(() => pool.end());
  return pool;
}

/**
 * How many user-stream events are committed in the store right now. The global read (`readAll`)
 * is no use for this: it only shows events below PostgreSQL's visibility horizon (an event
 * committed while an older transaction is still open waits until that one ends, so that no reader
 * ever skips it), and may briefly show fewer. The per-stream revisions are exact; the stream list
 * comes from the PostgreSQL adapter's `toolbus_streams` table (the stack runs on PostgreSQL).
 */
export async function committedUserEvents(s: TestStack, pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ stream_id: string }>(
    `select stream_id from toolbus_streams where stream_id like 'user-%'`,
  );
  let total = 0;
  for (const { stream_id } of rows) total += ((await s.store.streamInfo(stream_id))?.revision ?? -1) + 1;
  return total;
}

/**
 * Waits until the projector has applied every user-stream event committed so far (its checkpoint
 * counts them all), then compares the read models with a from-scratch replay of the store.
 */
export async function projectorCaughtUp(
  s: TestStack,
  pool: pg.Pool,
  options: { timeoutMs?: number; expectedEvents?: number } = {},
): Promise<ReplayComparison> {
  const admin = await s.token('acceptance-admin', ['admin']);
  const total = Math.max(await committedUserEvents(s, pool), options.expectedEvents ?? 0);
  await waitUntil(
    `the projector to apply all ${total} events`,
    async () => {
      const { status, body } = await http<{ checkpoint?: { events: number } }>(
        `${s.url('projector')}/projection`,
        {
          token: admin,
        },
      );
      return status === 200 && (body.checkpoint?.events ?? -1) >= total;
    },
    options.timeoutMs ?? 45_000,
    200,
  );
  return compareWithReplay(pool, s.store);
}

/** Every key in the stack's own Redis with its type and value, as text (for "is X anywhere?" checks). */
export async function redisDump(url: string): Promise<Array<{ key: string; type: string; value: string }>> {
  const redis = new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true });
  redis.on('error', () => undefined);
  await redis.connect();
  try {
    const out: Array<{ key: string; type: string; value: string }> = [];
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'COUNT', 500);
      cursor = next;
      for (const key of keys) {
        const type = await redis.type(key);
        let value: unknown;
        switch (type) {
          case 'string':
            value = await redis.get(key);
            break;
          case 'hash':
            value = await redis.hgetall(key);
            break;
          case 'zset':
            value = await redis.zrange(key, 0, '-1', 'WITHSCORES');
            break;
          case 'set':
            value = await redis.smembers(key);
            break;
          case 'list':
            value = await redis.lrange(key, 0, -1);
            break;
          default:
            value = `(${type})`;
        }
        out.push({ key, type, value: typeof value === 'string' ? value : JSON.stringify(value) });
      }
    } while (cursor !== '0');
    return out;
  } finally {
    redis.disconnect();
  }
}

/** Every row of every read-model table, as text per table (for "is X anywhere?" checks). */
export async function readModelText(pool: pg.Pool): Promise<Record<string, string>> {
  const { rows: tables } = await pool.query<{ table_name: string }>(
    `select table_name from information_schema.tables where table_schema = 'projection' order by table_name`,
  );
  const out: Record<string, string> = {};
  for (const { table_name } of tables) {
    const { rows } = await pool.query(`select * from projection.${pg.escapeIdentifier(table_name)}`);
    out[table_name] = JSON.stringify(rows);
  }
  return out;
}

/** The Prometheus text of a service's /metrics. */
export async function metricsText(baseUrl: string): Promise<string> {
  const res = await fetch(`${baseUrl}/metrics`, { signal: AbortSignal.timeout(10_000) });
  if (!res.ok) throw new Error(`/metrics answered ${res.status}`);
  return res.text();
}

/**
 * Samples of one metric from Prometheus text: each with its labels and value. `name` is the full
 * sample name (e.g. `toolbus_executions_total` or `toolbus_execution_duration_seconds_bucket`).
 */
export function samples(
  text: string,
  name: string,
): Array<{ labels: Record<string, string>; value: number }> {
  const out: Array<{ labels: Record<string, string>; value: number }> = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1]!] = l[2]!;
    out.push({ labels, value: Number(m[4]) });
  }
  return out;
}

/** The sum of a metric's samples whose labels include `match`. */
export function metricSum(text: string, name: string, match: Record<string, string> = {}): number {
  return samples(text, name)
    .filter((s) => Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

/** Runs `fn` over `items` with at most `limit` at a time; results in input order. */
export async function mapLimit<T, R>(
  items: T[],
  limit: number,
  fn: (item: T, i: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!, i);
    }
  });
  await Promise.all(workers);
  return results;
}

/** A seeded PRNG (mulberry32): the same seed gives the same numbers on every run. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}
