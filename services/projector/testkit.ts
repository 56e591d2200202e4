import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { USER_STREAM_PREFIX, userStream } from '../../contracts/index.ts';
import { loadConfig } from '../../lib/config.ts';
import {
  comparePositions,
  formatPosition,
  parsePosition,
  type EventStore,
} from '../../lib/eventstore/types.ts';
import { readCheckpoint } from './checkpoint.ts';
import { ProjectorEnv, type ProjectorConfig } from './config.ts';
import { PROJECTION_NAME } from './migrations.ts';
import type { Queryable } from './sql.ts';

/** Helpers for the projector's tests (not used by the service itself). */

/** The JWT secret of the projectors a test starts: random per run (no key has a default). */
export const TEST_SECRET = randomBytes(32).toString('hex');

export function testConfig(databaseUrl: string, env: Record<string, string> = {}): ProjectorConfig {
  return loadConfig(ProjectorEnv, {
    NODE_ENV: 'test',
    LOG_LEVEL: process.env['LOG_LEVEL'] ?? 'silent',
    DATABASE_URL: databaseUrl,
    JWT_SECRET: TEST_SECRET,
    PROJECTOR_PORT: '0',
    PROJECTOR_LOCK_POLL_MS: '100',
    PROJECTOR_LAG_INTERVAL_MS: '200',
    ...env,
  });
}

/** Polls `check` until it returns something other than false/undefined/null, or fails after `timeoutMs`. */
export async function waitFor<T>(
  check: () => Promise<T | false | undefined | null> | T | false | undefined | null,
  {
    timeoutMs = 30_000,
    intervalMs = 50,
    what = 'condition',
  }: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== false && v !== undefined && v !== null) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`,
      );
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Position of the newest user-stream event in the store, or null. */
export async function storeHead(store: EventStore): Promise<string | null> {
  for await (const e of store.readAll({ direction: 'backwards' })) {
    if (e.streamId.startsWith(USER_STREAM_PREFIX)) return formatPosition(e.position);
  }
  return null;
}

/** An event store that counts the user-stream events appended through it (by this test). */
export type CountingStore = EventStore & { readonly appended: number };

export function countingStore(inner: EventStore): CountingStore {
  let appended = 0;
  return new Proxy(inner, {
    has: (target, key) => key === 'appended' || Reflect.has(target, key),
    get(target, key) {
      if (key === 'appended') return appended;
      if (key === 'append') {
        return async (...args: Parameters<EventStore['append']>) => {
          const result = await target.append(...args);
          if (result.written && args[0].startsWith(USER_STREAM_PREFIX)) appended += args[1].length;
          return result;
        };
      }
      const value: unknown = Reflect.get(target, key, target);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  }) as CountingStore;
}

/**
 * Waits until the committed checkpoint is at (or past) the store's newest visible user-stream
 * event and, for a counting store, has applied every event appended through it. (PostgreSQL
 * hides events behind transactions still running anywhere on the server, so the visible head
 * alone can lag behind what a test wrote.)
 */
export async function waitForCatchUp(
  db: Queryable,
  store: EventStore | CountingStore,
  timeoutMs = 30_000,
): Promise<string | null> {
  let position: string | null = null;
  await waitFor(
    async () => {
      const head = await storeHead(store);
      const checkpoint = await readCheckpoint(db, PROJECTION_NAME);
      position = checkpoint.position;
      if ('appended' in store && checkpoint.events < store.appended) return false;
      if (head === null) return true;
      return position !== null && comparePositions(parsePosition(position), parsePosition(head)) >= 0;
    },
    { timeoutMs, what: 'the checkpoint to reach the store head' },
  );
  return position;
}

/**
 * Appends an event the projector cannot read into its own user stream: an unknown type, or a
 * known type with a newer schema version.
 */
export async function appendUnreadable(
  store: EventStore,
  userId: string,
  kind: 'unknown-type' | 'newer-version',
): Promise<void> {
  const stream = userStream(userId);
  const info = await store.streamInfo(stream);
  await store.append(
    stream,
    [
      {
        id: randomUUID(),
        type: kind === 'unknown-type' ? 'ToolTeleported' : 'ToolCompleted',
        data:
          kind === 'unknown-type'
            ? { to: 'mars' }
            : { result: 1, redacted: [], durationMs: 1, cached: false, extra: true },
        metadata: { schemaVersion: kind === 'unknown-type' ? 1 : 2, userId },
      },
    ],
    info === null ? 'no_stream' : info.revision,
  );
}

/**
 * The value of one sample in Prometheus text format: `name` with every label in `labels`
 * (the service label is ignored). Undefined when absent.
 */
export function metricValue(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries(
      [...(m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1]!, x[2]!]),
    );
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[4]);
  }
  return undefined;
}

/** The projector as a process (`node --import tsx services/projector/main.ts`), for e2e tests. */
const ROOT = new URL('../../', import.meta.url).pathname;

export interface ProjectorProcess {
  child: ChildProcess;
  /** Resolves with the HTTP base URL once the process logged that it is ready. */
  ready: Promise<string>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  signal(signal: NodeJS.Signals): void;
  log(): string;
}

export function spawnProjector(databaseUrl: string, env: Record<string, string> = {}): ProjectorProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', 'services/projector/main.ts'], {
    cwd: ROOT,
    env: {
      ...process.env,
      NODE_ENV: 'test',
      LOG_LEVEL: 'info',
      DATABASE_URL: databaseUrl,
      JWT_SECRET: TEST_SECRET,
      HOST: '127.0.0.1',
      PROJECTOR_PORT: '0',
      PROJECTOR_LOCK_POLL_MS: '100',
      PROJECTOR_LAG_INTERVAL_MS: '200',
      PROJECTION_BATCH_SIZE: '20',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  let resolveReady!: (url: string) => void;
  let rejectReady!: (e: Error) => void;
  const ready = new Promise<string>((resolve, reject) => ((resolveReady = resolve), (rejectReady = reject)));
  ready.catch(() => undefined);
  let buffered = '';
  child.stdout.on('data', (d: Buffer) => {
    output = (output + d.toString()).slice(-20_000);
    buffered += d.toString();
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    for (const line of lines) {
      if (!line.includes('projector ready')) continue;
      try {
        resolveReady((JSON.parse(line) as { url: string }).url);
      } catch {
        // not a log line
      }
    }
  });
  child.stderr.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-20_000)));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      rejectReady(
        new Error(`projector exited (${code ?? signal}) before it was ready:\n${output.slice(-3000)}`),
      );
      resolve({ code, signal });
    }),
  );
  return {
    child,
    ready,
    exited,
    signal: (s) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(s);
    },
    log: () => output,
  };
}

/** A small seeded generator, so a failing run can be repeated with PROJECTOR_TEST_SEED. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function fetchMetrics(url: string): Promise<string> {
  const res = await fetch(`${url}/metrics`);
  return res.text();
}
