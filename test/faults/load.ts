import { AgentAnswer, type JsonObject } from '../../contracts/index.ts';
import { AgentClientError, type AgentClient, type TerminalAnswer } from '../../lib/clients/agent.ts';
import { sleep } from './harness.ts';

/**
 * The traffic of a fault test: several users, each sending a stream of tool requests through the
 * agent client, and a ledger of every request and every terminal answer it got. An agent whose
 * attempt gets no answer (its NATS is away, the dispatcher died) tries again with the same
 * request id, as agents are told to: that is safe, and the checker holds the system to it.
 */

export interface User {
  userId: string;
  token: string;
}

export interface LedgerEntry {
  userId: string;
  requestId: string;
  tool: string;
  args: JsonObject;
  /** Every terminal answer received for this request id (each attempt, each repeat). */
  answers: TerminalAnswer[];
  attempts: number;
  /** Why the last attempt got no answer, while none has come. */
  lastError: string | null;
  /** When the first attempt was sent and the first answer came (ms since epoch). */
  sentAt: number;
  answeredAt: number | null;
  /** Sent outside the agent client (raw publish, HTTP, fuzz): may have no answer to wait for. */
  raw: boolean;
}

/** Codes answered without a record (no user known, or nothing to record the request under). */
export const UNRECORDED_CODES = new Set(['UNAUTHENTICATED', 'MALFORMED', 'OVERLOADED']);

export class Ledger {
  readonly entries = new Map<string, LedgerEntry>();

  private key = (userId: string, requestId: string) => `${userId}\u0000${requestId}`;

  /** The entry of (user, request id), created on first use. */
  entry(userId: string, requestId: string, tool = '(unknown)', args: JsonObject = {}): LedgerEntry {
    const k = this.key(userId, requestId);
    let e = this.entries.get(k);
    if (!e) {
      e = {
        userId,
        requestId,
        tool,
        args,
        answers: [],
        attempts: 0,
        lastError: null,
        sentAt: Date.now(),
        answeredAt: null,
        raw: false,
      };
      this.entries.set(k, e);
    }
    return e;
  }

  /** Records a request sent some other way than `send` (it may be refused and recorded). */
  expect(userId: string, requestId: string, tool = '(raw)'): LedgerEntry {
    const e = this.entry(userId, requestId, tool);
    e.raw = true;
    return e;
  }

  answer(userId: string, requestId: string, answer: TerminalAnswer): void {
    const e = this.entry(userId, requestId);
    e.answers.push(answer);
    e.answeredAt ??= Date.now();
    e.lastError = null;
  }

  all(): LedgerEntry[] {
    return [...this.entries.values()];
  }
  ofUser(userId: string): LedgerEntry[] {
    return this.all().filter((e) => e.userId === userId);
  }
  answered(): LedgerEntry[] {
    return this.all().filter((e) => e.answers.length > 0);
  }
  unanswered(): LedgerEntry[] {
    return this.all().filter((e) => e.answers.length === 0 && !e.raw);
  }

  /** Counts of first answers by outcome (`completed`, or the error code), and unanswered requests. */
  summary(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const e of this.all()) {
      const a = e.answers[0];
      const k = a ? (a.status === 'completed' ? 'completed' : a.error.code) : e.raw ? 'raw' : 'unanswered';
      out[k] = (out[k] ?? 0) + 1;
    }
    return out;
  }
}

export interface RequestSpec {
  tool: string;
  args: JsonObject;
}

/** A mix of the test tools: quick ones, slow ones (idempotent and not), failures, a cached one. */
export function defaultMix(i: number, rand: () => number): RequestSpec {
  const r = rand();
  if (r < 0.3) return { tool: 'echo', args: { i, text: `hello ${i}`, secret: `s3cret-${i}` } };
  if (r < 0.45) return { tool: 'noop', args: {} };
  if (r < 0.65) return { tool: 'sleep_idempotent', args: { ms: 100 + Math.floor(rand() * 700) } };
  if (r < 0.8) return { tool: 'sleep', args: { ms: 100 + Math.floor(rand() * 500) } };
  if (r < 0.88) return { tool: 'fail', args: { message: `planned failure ${i}` } };
  if (r < 0.95) return { tool: 'cached_echo', args: { k: Math.floor(rand() * 3) } };
  return { tool: 'bad_output', args: {} };
}

/** A small deterministic random source (mulberry32), so a failing seed can be run again. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

export interface SendOptions {
  /** Per attempt (default 15 s). */
  attemptTimeoutMs?: number;
  /** Give up (the request stays unanswered in the ledger) after this long (default 120 s). */
  giveUpAfterMs?: number;
}

/**
 * Sends one request as an agent would: the agent client, and on no answer (timeout, publish
 * failed, connection closed) or OVERLOADED (nothing was recorded: the intake was full, or the
 * request waited too long in it and was shed) the same request id again, until it is answered or
 * `giveUpAfterMs`. An OVERLOADED answer is not the request's answer, so it is not recorded as one.
 */
export async function send(
  agent: AgentClient,
  ledger: Ledger,
  user: User,
  requestId: string,
  spec: RequestSpec,
  options: SendOptions = {},
): Promise<TerminalAnswer | null> {
  const entry = ledger.entry(user.userId, requestId, spec.tool, spec.args);
  const deadline = Date.now() + (options.giveUpAfterMs ?? 120_000);
  for (let backoff = 250; ; backoff = Math.min(backoff * 2, 2_000)) {
    entry.attempts++;
    try {
      const answer = await agent.execute(spec.tool, spec.args, {
        token: user.token,
        requestId,
        timeoutMs: Math.max(1_000, Math.min(options.attemptTimeoutMs ?? 15_000, deadline - Date.now())),
      });
      if (answer.status === 'failed' && answer.error.code === 'OVERLOADED') {
        entry.lastError = `OVERLOADED: ${answer.error.message}`;
        const hint = Number(answer.error.details?.['retryAfterMs'] ?? 0);
        backoff = Math.max(backoff, Number.isFinite(hint) ? hint : 0);
      } else {
        ledger.answer(user.userId, requestId, answer);
        return answer;
      }
    } catch (e) {
      entry.lastError = e instanceof AgentClientError ? `${e.code}: ${e.message}` : String(e);
    }
    if (Date.now() + backoff >= deadline) return null;
    await sleep(backoff);
  }
}

export interface LoadOptions {
  agent: AgentClient;
  ledger: Ledger;
  users: User[];
  /** Requests each user keeps in flight (default 2). */
  concurrency?: number;
  /** What each request is (default `defaultMix`). */
  mix?: (i: number, rand: () => number, user: User) => RequestSpec;
  /** Pause between two requests of one worker (default 50 ms). */
  pauseMs?: number;
  /**
   * Chance that a worker, instead of a new request, sends an answered request id again: the
   * answer must be the same, and nothing must run twice (default 0.05).
   */
  repeatRate?: number;
  seed?: number;
  send?: SendOptions;
  /** Prefix of request ids (default `r`). */
  prefix?: string;
}

export interface Load {
  /** Requests issued so far (first attempts, repeats not counted). */
  readonly issued: number;
  /** Answers received so far (repeats included). */
  readonly answered: number;
  /** Stops issuing new requests and waits until every request in flight is answered or given up. */
  stop(): Promise<void>;
  /** Resolves once `n` more answers have arrived than when called (progress under a fault). */
  answersAfter(n: number, timeoutMs?: number): Promise<void>;
}

/** Starts the workers: each user runs `concurrency` loops of send, wait for the answer, pause. */
export function startLoad(o: LoadOptions): Load {
  const rand = random(o.seed ?? 1);
  const prefix = o.prefix ?? 'r';
  let stopped = false;
  let issued = 0;
  let answered = 0;
  const workers: Array<Promise<void>> = [];
  for (const user of o.users) {
    for (let w = 0; w < (o.concurrency ?? 2); w++) {
      workers.push(
        (async () => {
          for (let n = 0; !stopped; n++) {
            const done = o.ledger.ofUser(user.userId).filter((e) => e.answers.length > 0 && !e.raw);
            const repeat = done.length > 0 && rand() < (o.repeatRate ?? 0.05);
            if (repeat) {
              const old = done[Math.floor(rand() * done.length)]!;
              const a = await send(
                o.agent,
                o.ledger,
                user,
                old.requestId,
                { tool: old.tool, args: old.args },
                o.send,
              );
              if (a) answered++;
            } else {
              const i = issued++;
              const spec = (o.mix ?? defaultMix)(i, rand, user);
              const a = await send(
                o.agent,
                o.ledger,
                user,
                `${prefix}-${user.userId}-${w}-${n}`,
                spec,
                o.send,
              );
              if (a) answered++;
            }
            await sleep(o.pauseMs ?? 50);
          }
        })(),
      );
    }
  }
  return {
    get issued() {
      return issued;
    },
    get answered() {
      return answered;
    },
    async stop() {
      stopped = true;
      await Promise.all(workers);
    },
    async answersAfter(n, timeoutMs = 60_000) {
      const target = answered + n;
      const deadline = Date.now() + timeoutMs;
      while (answered < target) {
        if (Date.now() > deadline) throw new Error(`fewer than ${n} answers within ${timeoutMs} ms`);
        await sleep(50);
      }
    },
  };
}

/** Parses a terminal answer from raw bytes (a reply on an inbox), or null. */
export function parseTerminal(data: Uint8Array): TerminalAnswer | null {
  try {
    const parsed = AgentAnswer.safeParse(JSON.parse(new TextDecoder().decode(data)));
    if (!parsed.success) return null;
    const a = parsed.data;
    return a.status === 'completed' || a.status === 'failed' ? a : null;
  } catch {
    return null;
  }
}

export interface OpenLoadOptions {
  /** The agents that send (one NATS connection each); requests go to them in turn. */
  agents: AgentClient[];
  ledger: Ledger;
  users: User[];
  /** New requests per second, whatever the answers do (open loop). */
  ratePerSec: number;
  /** What each request is (default `defaultMix`). */
  mix?: (i: number, rand: () => number, user: User) => RequestSpec;
  /** Chance that a tick sends an answered request id of the user again instead (default 0.02). */
  repeatRate?: number;
  seed?: number;
  send?: SendOptions;
  /** Prefix of request ids (default `o`). */
  prefix?: string;
  /**
   * Requests in flight at most (default 5000): a bound of the generator's own memory. A tick that
   * finds it reached sends nothing and is counted in `skipped`; the test should see none.
   */
  maxInFlight?: number;
}

export interface OpenLoad extends Load {
  /** Requests sent and not yet answered or given up. */
  readonly inFlight: number;
  /** Requests the schedule asked for but the generator did not send (`maxInFlight` reached). */
  readonly skipped: number;
}

/**
 * Open-loop traffic: `ratePerSec` new requests a second on a fixed schedule, sent whether or not
 * the earlier ones were answered (a stalled system faces a growing backlog, as with real users),
 * each retried with its request id until answered (`send`). The schedule catches up after a late
 * timer, so the rate offered is the rate asked for on a loaded machine too.
 */
export function startOpenLoad(o: OpenLoadOptions): OpenLoad {
  const rand = random(o.seed ?? 1);
  const prefix = o.prefix ?? 'o';
  const maxInFlight = o.maxInFlight ?? 5_000;
  const started = performance.now();
  let scheduled = 0;
  let issued = 0;
  let answered = 0;
  let skipped = 0;
  const inFlight = new Set<Promise<void>>();

  const fire = (n: number) => {
    const user = o.users[n % o.users.length]!;
    const agent = o.agents[n % o.agents.length]!;
    // The ledger is only searched for a repeat when one is due: it grows large in an open loop.
    const done =
      rand() < (o.repeatRate ?? 0.02)
        ? o.ledger.ofUser(user.userId).filter((e) => e.answers.length > 0 && !e.raw)
        : [];
    let requestId: string;
    let spec: RequestSpec;
    if (done.length > 0) {
      const old = done[Math.floor(rand() * done.length)]!;
      requestId = old.requestId;
      spec = { tool: old.tool, args: old.args };
    } else {
      const i = issued++;
      requestId = `${prefix}-${user.userId}-${i}`;
      spec = (o.mix ?? defaultMix)(i, rand, user);
    }
    const p: Promise<void> = send(agent, o.ledger, user, requestId, spec, o.send).then((a) => {
      if (a) answered++;
      inFlight.delete(p);
    });
    inFlight.add(p);
  };

  const timer = setInterval(() => {
    const due = Math.floor(((performance.now() - started) * o.ratePerSec) / 1000);
    for (; scheduled < due; scheduled++) {
      if (inFlight.size >= maxInFlight) skipped++;
      else fire(scheduled);
    }
  }, 5);

  return {
    get issued() {
      return issued;
    },
    get answered() {
      return answered;
    },
    get inFlight() {
      return inFlight.size;
    },
    get skipped() {
      return skipped;
    },
    async stop() {
      clearInterval(timer);
      await Promise.all([...inFlight]);
    },
    async answersAfter(n, timeoutMs = 60_000) {
      const target = answered + n;
      const deadline = Date.now() + timeoutMs;
      while (answered < target) {
        if (Date.now() > deadline) throw new Error(`fewer than ${n} answers within ${timeoutMs} ms`);
        await sleep(50);
      }
    },
  };
}

/** How the answers fared around a fault (`measureResume`). */
export interface ResumeGap {
  /** When the fault was made (ms since epoch). */
  faultAt: number;
  /**
   * From the fault to the first answer to a request sent after it: how long the system gave no
   * new answers (ms).
   */
  resumedAfterMs: number;
}

/**
 * Waits until a request first sent at or after `faultAt` is answered and says how long after the
 * fault that was: the time answers stopped for, under traffic that keeps coming. Used by the
 * cluster fault test and by the benchmark ("answers resume within 15 s").
 */
export async function measureResume(
  ledger: Ledger,
  faultAt: number,
  timeoutMs = 120_000,
): Promise<ResumeGap> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let first: number | null = null;
    for (const e of ledger.entries.values()) {
      if (e.sentAt >= faultAt && e.answeredAt !== null && (first === null || e.answeredAt < first)) {
        first = e.answeredAt;
      }
    }
    if (first !== null) return { faultAt, resumedAfterMs: first - faultAt };
    if (Date.now() > deadline)
      throw new Error(`no request sent after the fault was answered within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/**
 * The requests first sent in the `windowMs` after a fault, and the slowest of them: who waited for
 * the fault, and how long (ms from its first attempt to its answer; null while one is unanswered).
 */
export function faultImpact(
  ledger: Ledger,
  faultAt: number,
  windowMs: number,
): { sent: number; slowestMs: number | null; slowest: LedgerEntry | null } {
  let sent = 0;
  let slowest: LedgerEntry | null = null;
  const waited = (e: LedgerEntry) => (e.answeredAt === null ? Infinity : e.answeredAt - e.sentAt);
  for (const e of ledger.entries.values()) {
    if (e.raw || e.sentAt < faultAt || e.sentAt >= faultAt + windowMs) continue;
    sent++;
    if (slowest === null || waited(e) > waited(slowest)) slowest = e;
  }
  const ms = slowest ? waited(slowest) : 0;
  return { sent, slowestMs: Number.isFinite(ms) ? ms : null, slowest };
}
