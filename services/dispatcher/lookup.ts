import type { Msg } from '@nats-io/transport-node';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import { DISPATCHERS_QUEUE, REQUEST_HEADERS, REQUEST_ID_PATTERN, subjects } from '../../contracts/index.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { refusal, type TerminalAnswer } from './answers.ts';
import { errorInfo } from './dispatcher.ts';

const PREFIX = 'toolbus.answers.';

/**
 * "What became of my request R?" on `toolbus.answers.<userId>` (queue group of all dispatchers):
 * the agent client asks when JetStream dropped its retry as a duplicate, so the answer went to the
 * first attempt's inbox. The token decides the user, as for requests. Replies
 * `{"answer": TerminalAnswer | null}`; null while the execution has no terminal event yet.
 */
export function serveAnswers(
  nc: NatsConnection,
  verifier: TokenVerifier,
  lookup: (userId: string, requestId: string) => Promise<TerminalAnswer | null>,
  log: Logger,
): { stop(): Promise<void> } {
  const respond = (msg: Msg, answer: TerminalAnswer | null) => {
    try {
      msg.respond(JSON.stringify({ answer }));
    } catch {
      // the asker is gone
    }
  };
  const handle = async (msg: Msg) => {
    let userId: string;
    try {
      ({ userId } = await verifier.verify(msg.headers?.get(REQUEST_HEADERS.authorization)));
    } catch (e) {
      if (!(e instanceof AuthError)) throw e;
      return respond(msg, refusal('UNAUTHENTICATED', `token ${e.reason}: ${e.message}`));
    }
    if (msg.subject !== `${PREFIX}${userId}`) {
      return respond(
        msg,
        refusal('FORBIDDEN', `the token is for user ${userId}; it may not ask about another user's requests`),
      );
    }
    let requestId: unknown;
    try {
      requestId = msg.json<{ requestId?: unknown }>().requestId;
    } catch {
      requestId = undefined;
    }
    if (typeof requestId !== 'string' || !REQUEST_ID_PATTERN.test(requestId)) {
      return respond(msg, refusal('MALFORMED', 'expected {"requestId": "<request id>"}'));
    }
    respond(msg, await lookup(userId, requestId));
  };
  const sub = nc.subscribe(subjects.answersAll, {
    queue: DISPATCHERS_QUEUE,
    callback: (err, msg) => {
      if (err) return;
      handle(msg).catch((e: unknown) => {
        log.warn({ err: errorInfo(e), subject: msg.subject }, 'answer lookup failed');
        respond(msg, null);
      });
    },
  });
  return {
    async stop() {
      if (!nc.isClosed()) await sub.drain().catch(() => undefined);
    },
  };
}
