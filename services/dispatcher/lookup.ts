import type { Msg } from '@nats-io/transport-node';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import {
  DISPATCHERS_QUEUE,
  REQUEST_HEADERS,
  REQUEST_ID_PATTERN,
  isInboxOf,
  subjects,
  type AnswersReply,
} from '../../contracts/index.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { refusal, type TerminalAnswer } from './answers.ts';

/** Lookups that may wait for a slot by default (`LookupLimits.maxWaiting`). */
export const DEFAULT_MAX_WAITING = 256;

/** `toolbus.answers.<user>.<asking identity>` */
const ANSWERS_SUBJECT = /^toolbus\.answers\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{1,64})$/;

/** How many lookups run at once, and how long one may take, before lookups are refused OVERLOADED. */
export interface LookupLimits {
  /** Lookups in flight in this instance (their store work included, even past the deadline). */
  maxInFlight: number;
  /** How long one lookup may take before it is answered OVERLOADED. */
  deadlineMs: number;
  /** The retry hint of an OVERLOADED reply (default: the deadline). */
  retryAfterMs?: number;
  /**
   * Lookups that wait for a slot, in order of arrival, when all are taken (default 256); beyond,
   * refused at once. A burst of lookups read from the connection together is served at the store's
   * pace instead of all but `maxInFlight` refused (the agents would ask again: more load).
   */
  maxWaiting?: number;
}

/** Results counted by `toolbus_answer_lookups_total{result}`. */
export type LookupResult = 'answered' | 'pending' | 'shed' | 'refused' | 'overloaded' | 'deadline' | 'failed';

/**
 * A request the intake shed unrun `shed` times (it waited too long, decision 0035), with no answer
 * since: the asker publishes it again under `<message id>~<shed>` (`AnswersReply.shed`).
 */
export interface ShedRequest {
  shed: number;
}

export interface LookupMetrics {
  lookups: { inc(labels: { result: LookupResult }): void };
  lookupsInFlight: { inc(): void; dec(): void };
}

export interface AnswersServiceOptions {
  nc: NatsConnection;
  verifier: TokenVerifier;
  /** `asked`: the tool and `askDigest` of the asker's request, when it says (see `Dispatcher.lookup`). */
  lookup: (userId: string, requestId: string, asked: Asked) => Promise<TerminalAnswer | ShedRequest | null>;
  /**
   * What is known without the store (Redis, this instance), tried before a slot is taken:
   * `undefined` when only the store can say. Lookups of answered or shed requests (the many that
   * agents send at once after a NATS reconnect) then wait for no slot (see `Dispatcher.lookupKnown`).
   */
  known?: (
    userId: string,
    requestId: string,
    asked: Asked,
  ) => Promise<TerminalAnswer | ShedRequest | null | undefined>;
  log: Logger;
  limits: LookupLimits;
  metrics?: LookupMetrics;
}

/** The lookup did not end within its deadline. */
class LookupDeadlineError extends Error {
  constructor(deadlineMs: number) {
    super(`the lookup took more than ${deadlineMs} ms`);
    this.name = 'LookupDeadlineError';
  }
}

/**
 * "What became of my request R?" on `toolbus.answers.<userId>` (queue group of all dispatchers):
 * the agent client asks when JetStream dropped its retry as a duplicate, so the answer went to the
 * first attempt's inbox. The token decides the user, as for requests. Replies an `AnswersReply`
 * (contracts/services.ts).
 *
 * Bounded: at most `maxInFlight` lookups run at once, each answered within `deadlineMs`. A lookup
 * over the bound is refused before its token is read or the store touched, and one past its
 * deadline is answered then (its store work keeps its slot until it ends, so the bound is the
 * store work this service causes); both as `{answer: null, overloaded: {retryAfterMs}}`.
 */
export function serveAnswers(o: AnswersServiceOptions): { stop(): Promise<void>; readonly inFlight: number } {
  const { nc, verifier, log, limits } = o;
  const retryAfterMs = limits.retryAfterMs ?? limits.deadlineMs;
  const maxWaiting = limits.maxWaiting ?? DEFAULT_MAX_WAITING;
  let inFlight = 0;
  /** Lookups asking `known` (one Redis round trip each): bounded apart from the store's slots. */
  let knownInFlight = 0;
  const maxKnown = Math.max(limits.maxInFlight, maxWaiting);
  /** Lookups waiting for a slot, oldest first: each is handed one as a lookup ends. */
  const waiting: Array<(granted: boolean) => void> = [];

  /** A slot (true), at once or after waiting for one until `until`; false: none in time, or no room to wait. */
  const acquire = (until: number): Promise<boolean> | boolean => {
    if (inFlight < limits.maxInFlight) {
      inFlight++;
      o.metrics?.lookupsInFlight.inc();
      return true;
    }
    if (waiting.length >= maxWaiting) return false;
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(
        () => {
          const i = waiting.indexOf(grant);
          if (i >= 0) waiting.splice(i, 1);
          resolve(false);
        },
        Math.max(0, until - Date.now()),
      );
      const grant = (granted: boolean) => {
        clearTimeout(timer);
        resolve(granted);
      };
      waiting.push(grant);
    });
  };
  /** A lookup's slot goes to the oldest waiting one, or is freed. */
  const release = () => {
    const next = waiting.shift();
    if (next) return next(true);
    inFlight--;
    o.metrics?.lookupsInFlight.dec();
  };

  const respond = (msg: Msg, reply: AnswersReply, result: LookupResult) => {
    o.metrics?.lookups.inc({ result });
    try {
      msg.respond(JSON.stringify(reply));
    } catch {
      // The connection is closing: the asker will ask another dispatcher.
    }
  };
  const overloaded = (msg: Msg, result: 'overloaded' | 'deadline') =>
    respond(msg, { answer: null, overloaded: { retryAfterMs } }, result);

  /**
   * The lookup in the slot acquired, or LookupDeadlineError at the deadline (`until`, counted from
   * the lookup's arrival); the slot is held until the lookup ends.
   */
  const bounded = (
    userId: string,
    requestId: string,
    asked: Asked,
    until: number,
  ): Promise<TerminalAnswer | ShedRequest | null> => {
    const work = o.lookup(userId, requestId, asked).finally(release);
    let timer: NodeJS.Timeout | undefined;
    let late = false;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => {
          late = true;
          reject(new LookupDeadlineError(limits.deadlineMs));
        },
        Math.max(0, until - Date.now()),
      );
    });
    // A lookup that fails after its deadline was answered already: its failure is only logged.
    work.catch((e: unknown) => {
      if (late) log.debug({ err: e, userId, requestId }, 'lookup failed after its deadline');
    });
    return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
  };

  const handle = async (msg: Msg) => {
    // The reply goes only to an inbox of the identity the subject names (the server lets only that
    // identity publish there): no one can make a dispatcher answer into another's inbox.
    const asker = ANSWERS_SUBJECT.exec(msg.subject);
    if (!asker || !msg.reply || !isInboxOf(asker[2]!, msg.reply)) {
      log.warn(
        { subject: msg.subject, reply: msg.reply },
        "answer lookup with a reply subject outside its asker's inbox: ignored",
      );
      return;
    }
    const until = Date.now() + limits.deadlineMs;
    // No slot, no room to wait and none for a lookup without the store: refused before the token is read.
    if (
      inFlight >= limits.maxInFlight &&
      waiting.length >= maxWaiting &&
      !(o.known && knownInFlight < maxKnown)
    )
      return overloaded(msg, 'overloaded');
    let userId: string;
    try {
      ({ userId } = await verifier.verify(msg.headers?.get(REQUEST_HEADERS.authorization)));
    } catch (e) {
      if (!(e instanceof AuthError)) throw e;
      return respond(msg, { answer: refusal('UNAUTHENTICATED', e.message) }, 'refused');
    }
    if (asker[1] !== userId) {
      const message = `the token is for user ${userId}; it may not ask about another user's requests`;
      return respond(msg, { answer: refusal('FORBIDDEN', message) }, 'refused');
    }
    const { requestId, asked } = bodyOf(msg);
    if (requestId === null) {
      return respond(
        msg,
        { answer: refusal('MALFORMED', 'expected {"requestId": "<request id>"}') },
        'refused',
      );
    }
    // What Redis or this instance knows is answered without a slot (at most `maxKnown` such
    // lookups at once; beyond, they take the slow path).
    let answer: TerminalAnswer | ShedRequest | null | undefined;
    if (o.known && knownInFlight < maxKnown) {
      knownInFlight++;
      try {
        answer = await o.known(userId, requestId, asked);
      } finally {
        knownInFlight--;
      }
    }
    if (answer === undefined) {
      // A slot now, or once one is free (verifying the token may have waited, a JWKS fetch, while
      // others started); none before the deadline, or no room to wait: OVERLOADED.
      if (!(await acquire(until))) return overloaded(msg, 'overloaded');
      try {
        answer = await bounded(userId, requestId, asked, until);
      } catch (e) {
        if (!(e instanceof LookupDeadlineError)) throw e;
        log.warn({ userId, requestId, deadlineMs: limits.deadlineMs }, 'answer lookup past its deadline');
        return overloaded(msg, 'deadline');
      }
    }
    if (answer && 'shed' in answer) return respond(msg, { answer: null, shed: answer.shed }, 'shed');
    respond(msg, { answer }, answer ? 'answered' : 'pending');
  };

  const sub = nc.subscribe(subjects.answersAll, {
    queue: DISPATCHERS_QUEUE,
    callback: (err, msg) => {
      // A subscription error (permissions) ends it; nats.js reports it on the connection's status too.
      if (err) return log.warn({ err }, 'answer lookups subscription failed');
      handle(msg).catch((e: unknown) => {
        log.warn({ err: e, subject: msg.subject }, 'answer lookup failed');
        respond(msg, { answer: null }, 'failed');
      });
    },
  });
  return {
    get inFlight() {
      return inFlight;
    },
    async stop() {
      // Draining a subscription of a connection that is closing fails; nothing is left to stop then.
      if (!nc.isClosed()) await sub.drain().catch(() => undefined);
    },
  };
}

/** What the asker's request asks, as far as it says: its tool, and the `askDigest` of tool and arguments. */
export interface Asked {
  tool?: string | undefined;
  ask?: string | undefined;
}

/** The request id asked about (null: answered MALFORMED), and what the asker's request asks. */
function bodyOf(msg: Msg): { requestId: string | null; asked: Asked } {
  let body: { requestId?: unknown; ask?: unknown; tool?: unknown };
  try {
    body = msg.json<{ requestId?: unknown; ask?: unknown; tool?: unknown }>();
  } catch {
    return { requestId: null, asked: {} }; // not JSON
  }
  const { requestId, ask, tool } = body ?? {};
  return {
    requestId: typeof requestId === 'string' && REQUEST_ID_PATTERN.test(requestId) ? requestId : null,
    asked: {
      ask: typeof ask === 'string' && /^[0-9a-f]{16}$/.test(ask) ? ask : undefined,
      tool: typeof tool === 'string' && tool.length <= 64 ? tool : undefined,
    },
  };
}
