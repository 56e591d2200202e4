/**
 * Pure rules of the notifier: what to do with an event given what a socket was last sent, and
 * how many messages a client may send.
 */

/**
 * `cursor` is the revision last sent to the socket for that user (-1: none yet; undefined: not
 * tracked yet, which only happens for an admin watching every user).
 * - `send`: the next one, send it.
 * - `duplicate`: already sent (a replayed event arriving live too, or a NATS redelivery).
 * - `gap`: revisions are missing before it; read them from the store first.
 * - `baseline`: first event of a user an admin sees; send it and start tracking there.
 */
export type Verdict = 'send' | 'duplicate' | 'gap' | 'baseline';

export function classify(cursor: number | undefined, revision: number): Verdict {
  if (cursor === undefined) return 'baseline';
  if (revision <= cursor) return 'duplicate';
  if (revision === cursor + 1) return 'send';
  return 'gap';
}

/** A token bucket: `burst` messages at once, refilled at `perSecond`. */
export class RateLimiter {
  private tokens: number;
  private last: number;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = burst;
    this.last = now();
  }

  /** Takes one token; false when the bucket is empty. */
  take(): boolean {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) / 1000) * this.perSecond);
    this.last = t;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}
