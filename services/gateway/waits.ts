/**
 * What each user has waiting on this gateway: `tools/call`s awaiting their answer and
 * `tasks/result`s polling for theirs. Each holds an HTTP response and, for a call, a NATS
 * subscription, for up to GATEWAY_CALL_TIMEOUT_MS; the dispatcher's rate limit bounds how fast a
 * user starts calls, not how many they keep open. Beyond the bound the next one is refused at
 * once (docs/mcp.md, "Configuration").
 */
export class Waits {
  readonly #byUser = new Map<string, number>();
  readonly perUser: number;

  constructor(perUser: number) {
    this.perUser = perUser;
  }

  /** A place for one more wait of `userId` (release it once, when the wait ends), or null at the bound. */
  enter(userId: string): (() => void) | null {
    const held = this.#byUser.get(userId) ?? 0;
    if (held >= this.perUser) return null;
    this.#byUser.set(userId, held + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#byUser.get(userId) ?? 1) - 1;
      if (left === 0) this.#byUser.delete(userId);
      else this.#byUser.set(userId, left);
    };
  }

  /** Why a wait was refused, for the caller to read. */
  refusal(): string {
    return `you have ${this.perUser} calls waiting on this gateway already (GATEWAY_MAX_WAITS_PER_USER); retry when one has ended`;
  }
}
