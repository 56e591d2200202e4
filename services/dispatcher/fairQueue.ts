/**
 * The intake's waiting room: requests pulled from JetStream that have not started yet, one FIFO per
 * user, and the choice of which one starts when a slot frees. Pure (no I/O, no clock), so the
 * scheduling rules are unit-tested on their own; see docs/progress-cancellation-fairness.md.
 *
 * - A user may hold at most `userSlots` running requests of this instance; its other requests wait.
 * - The next request comes from the user with the fewest running requests among those below their
 *   slots; ties go to the user served least recently (round robin). A user who has just arrived
 *   with one request is therefore served before anyone already running something.
 * - Within a user, first in, first out.
 */
export class FairQueue<T> {
  /** Only users with at least one waiting item; insertion order has no meaning. */
  readonly #queues = new Map<string, T[]>();
  readonly #running = new Map<string, number>();
  /** When each user was last given a slot (a counter, not a clock). */
  readonly #served = new Map<string, number>();
  #tick = 0;
  #size = 0;

  constructor(readonly userSlots: number) {
    if (!Number.isInteger(userSlots) || userSlots < 1)
      throw new Error('userSlots must be a whole number >= 1');
  }

  /** Items waiting. */
  get size(): number {
    return this.#size;
  }

  /** Users with items waiting. */
  get users(): number {
    return this.#queues.size;
  }

  push(user: string, item: T): void {
    let q = this.#queues.get(user);
    if (!q) this.#queues.set(user, (q = []));
    q.push(item);
    this.#size++;
  }

  runningOf(user: string): number {
    return this.#running.get(user) ?? 0;
  }

  /** Some waiting item may start now as far as its user's slots go. */
  hasEligible(): boolean {
    for (const user of this.#queues.keys()) if (this.runningOf(user) < this.userSlots) return true;
    return false;
  }

  /**
   * Removes and returns the item that should start next, or undefined when every waiting user is
   * at its slots (or nothing waits). Does not count it as running: call `begin` when it starts.
   */
  next(): { user: string; item: T } | undefined {
    let best: string | undefined;
    let bestRunning = Infinity;
    let bestServed = Infinity;
    for (const user of this.#queues.keys()) {
      const running = this.runningOf(user);
      if (running >= this.userSlots) continue;
      const served = this.#served.get(user) ?? -1;
      if (running < bestRunning || (running === bestRunning && served < bestServed)) {
        best = user;
        bestRunning = running;
        bestServed = served;
      }
    }
    if (best === undefined) return undefined;
    const item = this.#shift(best);
    return item === undefined ? undefined : { user: best, item };
  }

  /** Removes and returns the first waiting item of `user` that `match` accepts. */
  take(user: string, match: (item: T) => boolean): T | undefined {
    const q = this.#queues.get(user);
    if (!q) return undefined;
    const i = q.findIndex(match);
    if (i < 0) return undefined;
    const [item] = q.splice(i, 1);
    this.#size--;
    if (q.length === 0) this.#queues.delete(user);
    return item;
  }

  /** One of `user`'s items starts running (taken with `next` or `take`). */
  begin(user: string): void {
    this.#running.set(user, this.runningOf(user) + 1);
    this.#served.set(user, ++this.#tick);
  }

  /** One of `user`'s running items ended. */
  done(user: string): void {
    const n = this.runningOf(user) - 1;
    if (n > 0) {
      this.#running.set(user, n);
      return;
    }
    this.#running.delete(user);
    // Nothing of this user is left here: forget it (a user who comes back counts as new).
    if (!this.#queues.has(user)) this.#served.delete(user);
  }

  /** Every waiting item, oldest first per user. */
  *items(): IterableIterator<T> {
    for (const q of this.#queues.values()) yield* q;
  }

  /** Removes and returns every waiting item. */
  drain(): T[] {
    const all = [...this.items()];
    this.#queues.clear();
    this.#size = 0;
    for (const user of [...this.#served.keys()]) if (!this.#running.has(user)) this.#served.delete(user);
    return all;
  }

  #shift(user: string): T | undefined {
    const q = this.#queues.get(user);
    const item = q?.shift();
    if (item === undefined) return undefined;
    this.#size--;
    if (q!.length === 0) this.#queues.delete(user);
    return item;
  }
}
