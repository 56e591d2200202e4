import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Structured logs. Tokens never reach a log line: the paths that could carry one are censored,
 * and code logs principals (user id, roles), never raw requests.
 */
export const REDACT_PATHS = [
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'req.headers.authorization',
  'req.headers["sec-websocket-protocol"]',
  'headers.authorization',
  'headers.Authorization',
];

const LOG_BUFFER_BYTES = 16 * 1024 * 1024;

/**
 * To stdout, asynchronously: lines written while a write is under way go out together in the next
 * one, instead of one blocking write per line (a dispatcher logs every answer). pino flushes what
 * is left when the process exits; a SIGKILL may lose the last lines. A stdout that cannot keep up
 * holds at most 16 MiB of lines; beyond that lines are dropped rather than the heap growing.
 */
export function createLogger(name: string, level: string = process.env['LOG_LEVEL'] ?? 'info'): Logger {
  return pino(
    {
      name,
      level,
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
      // `{ err: e }` everywhere: type, message and stack (with those of its causes), and its own
      // fields such as `code`. Log the error itself, not a hand-made summary of it.
      serializers: { err: pino.stdSerializers.err },
    },
    pino.destination({ dest: 1, sync: false, maxLength: LOG_BUFFER_BYTES }),
  );
}
