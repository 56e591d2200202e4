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

  /** Takes a place for `address`; returns the function that gives it back (once), or null when full. */
  enter(address: string): (() => void) | null {
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
