/**
 * The host a remote address counts for. Every loopback address (127.0.0.0/8, `::1`, and their
 * IPv4-mapped forms) is this machine: a local process could otherwise open `perAddress` sockets
 * from each of 127.0.0.2, 127.0.0.3, … and hold every place. An IPv6 address counts for its /64,
 * the block one host is usually given.
 */
export function hostOf(address: string): string {
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  if (v4 === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4)) return 'loopback';
  return v4.includes(':') ? ipv6Slash64(v4) : v4;
}

/** `2001:db8:1:2::/64` for any address of that block (zone and embedded IPv4 tail ignored). */
function ipv6Slash64(address: string): string {
  const bare = address.split('%')[0]!;
  const [head = '', tail] = bare.split('::');
  const front = head ? head.split(':') : [];
  const back = tail ? tail.split(':') : [];
  const groups =
    tail === undefined
      ? front
      : [...front, ...Array<string>(Math.max(0, 8 - front.length - back.length)).fill('0'), ...back];
  return `${groups
    .slice(0, 4)
    .map((g) => (parseInt(g, 16) || 0).toString(16))
    .join(':')}::/64`;
}

/**
 * Places for sockets that have not authenticated yet: at most `total` in all and `perAddress`
 * from one remote address. Such a socket costs the notifier memory and a timer for up to
 * NOTIFIER_AUTH_TIMEOUT_MS while it costs its opener nothing; the cap keeps one host from
 * holding them all.
 */
export class UnauthenticatedSockets {
  private count = 0;
  private readonly byAddress = new Map<string, number>();

  constructor(
    private readonly total: number,
    private readonly perAddress: number,
  ) {}

  /** Takes a place for `remote`; returns the function that gives it back (once), or null when full. */
  enter(remote: string): (() => void) | null {
    const address = hostOf(remote);
    const mine = this.byAddress.get(address) ?? 0;
    if (this.count >= this.total || mine >= this.perAddress) return null;
    this.count++;
    this.byAddress.set(address, mine + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.count--;
      const left = (this.byAddress.get(address) ?? 1) - 1;
      if (left > 0) this.byAddress.set(address, left);
      else this.byAddress.delete(address);
    };
  }

  get size(): number {
    return this.count;
  }
}

/**
 * Authenticated sockets per user on this notifier: at most `perUser` at once. Each one costs a
 * replay, a queue and a share of every event of its user; without a cap one user could open
 * enough to slow the notifier down for everyone.
 */
export class UserSockets {
  private readonly byUser = new Map<string, number>();

  constructor(private readonly perUser: number) {}

  /** Takes a place for `userId`; returns the function that gives it back (once), or null when full. */
  enter(userId: string): (() => void) | null {
    const mine = this.byUser.get(userId) ?? 0;
    if (mine >= this.perUser) return null;
    this.byUser.set(userId, mine + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.byUser.get(userId) ?? 1) - 1;
      if (left > 0) this.byUser.set(userId, left);
      else this.byUser.delete(userId);
    };
  }

  /** Open authenticated sockets of `userId` (for tests and diagnostics). */
  of(userId: string): number {
    return this.byUser.get(userId) ?? 0;
  }
}

interface Waiter {
  userId: string;
  cancelled: () => boolean;
  start: (admitted: boolean) => void;
}

/**
 * The store reads that sockets make for themselves (a replay after `subscribe`, a gap fill after
 * a queue overflow), one page at a time: at most `perUser` in flight for one user and `total` in
 * all; the others wait in arrival order. A user whose reads are all in flight does not hold up
 * another user's: the first waiter whose user has room goes next. A slot covers the read and the
 * parsing of one page, not the wait for the socket to take it, so a slow reader holds none.
 */
export class CatchUpReads {
  private inFlight = 0;
  private readonly byUser = new Map<string, number>();
  private readonly waiting: Waiter[] = [];

  constructor(
    private readonly total: number,
    private readonly perUser: number,
  ) {}

  /**
   * Runs `read` once a slot is free for `userId`, and frees it after. Resolves with null, without
   * running `read`, if `cancelled()` (the socket closed) by the time its turn comes.
   */
  async run<T>(
    userId: string,
    read: () => Promise<T>,
    cancelled: () => boolean = () => false,
  ): Promise<T | null> {
    if (cancelled()) return null;
    if (!this.fits(userId)) {
      const admitted = await new Promise<boolean>((start) => this.waiting.push({ userId, cancelled, start }));
      if (!admitted) return null;
    } else {
      this.take(userId);
    }
    try {
      return await read();
    } finally {
      this.leave(userId);
    }
  }

  /** Reads in flight and reads waiting (for metrics and tests). */
  get running(): number {
    return this.inFlight;
  }

  get queued(): number {
    return this.waiting.length;
  }

  private fits(userId: string): boolean {
    return this.inFlight < this.total && (this.byUser.get(userId) ?? 0) < this.perUser;
  }

  private take(userId: string): void {
    this.inFlight++;
    this.byUser.set(userId, (this.byUser.get(userId) ?? 0) + 1);
  }

  private leave(userId: string): void {
    this.inFlight--;
    const left = (this.byUser.get(userId) ?? 1) - 1;
    if (left > 0) this.byUser.set(userId, left);
    else this.byUser.delete(userId);
    this.next();
  }

  /** Starts every waiter that fits, in arrival order; drops those whose socket closed. */
  private next(): void {
    for (let i = 0; i < this.waiting.length && this.inFlight < this.total;) {
      const waiter = this.waiting[i]!;
      if (waiter.cancelled()) {
        this.waiting.splice(i, 1);
        waiter.start(false);
      } else if (this.fits(waiter.userId)) {
        this.waiting.splice(i, 1);
        this.take(waiter.userId);
        waiter.start(true);
      } else {
        i++;
      }
    }
  }
}
