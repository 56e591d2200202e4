/**
 * A progress line for long walks, on stderr: events so far, events per second, the revision
 * reached and the heap in use. At most one line a second; rewritten in place on a terminal, one
 * line each otherwise (when forced on with --progress).
 */
export interface ProgressOptions {
  enabled: boolean;
  out?: NodeJS.WritableStream & { isTTY?: boolean };
  intervalMs?: number;
  now?: () => number;
}

export class Progress {
  private readonly out: NodeJS.WritableStream & { isTTY?: boolean };
  private readonly intervalMs: number;
  private readonly now: () => number;
  private readonly startedAt: number;
  private lastPrint: number;
  private count = 0;
  private revision = -1;
  private printed = false;

  constructor(
    private readonly label: string,
    private readonly options: ProgressOptions,
  ) {
    this.out = options.out ?? process.stderr;
    this.intervalMs = options.intervalMs ?? 1000;
    this.now = options.now ?? Date.now;
    this.startedAt = this.now();
    this.lastPrint = this.startedAt;
  }

  /** A first line (with the heap before the walk), when enabled. */
  start(): void {
    if (this.options.enabled) this.print(false);
  }

  tick(revision: number): void {
    this.count++;
    this.revision = revision;
    if (!this.options.enabled || (this.count & 255) !== 0) return;
    const t = this.now();
    if (t - this.lastPrint < this.intervalMs) return;
    this.lastPrint = t;
    this.print(false);
  }

  /** Prints the final line (only if a progress line was printed before). */
  done(): void {
    if (this.options.enabled && this.printed) this.print(true);
  }

  private print(final: boolean): void {
    const seconds = Math.max((this.now() - this.startedAt) / 1000, 0.001);
    const rate = Math.round(this.count / seconds);
    const heapMb = (process.memoryUsage().heapUsed / 1048576).toFixed(1);
    const line = `${this.label}: ${this.count} events, ${rate} events/s, revision ${this.revision}, heap ${heapMb} MB${final ? ', done' : ''}`;
    if (this.out.isTTY) this.out.write(`\r\x1b[K${line}${final ? '\n' : ''}`);
    else this.out.write(`${line}\n`);
    this.printed = true;
  }
}
