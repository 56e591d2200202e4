import { Worker } from 'node:worker_threads';

/**
 * A small pool of worker threads (node:worker_threads) for CPU work that would otherwise hold one
 * event loop: each task goes to the worker with the fewest tasks in hand, and its answer comes back
 * as a promise. Tasks must be independent; callers that need an order await the promises in it.
 *
 * A worker runs BOOT, which registers tsx and imports the task module (a .ts file like every
 * other in this repository), whose `handle(request)` answers each task. Idle workers are
 * unref'd: a pool nobody closed does not keep a process alive.
 */

export class ThreadPoolError extends Error {
  readonly code = 'THREAD_POOL';
  constructor(message: string) {
    super(message);
    this.name = 'ThreadPoolError';
  }
}

/** An error thrown by a task in a worker, carried back with its name and message. */
export class ThreadTaskError extends Error {
  readonly code = 'THREAD_TASK';
  constructor(
    readonly remoteName: string,
    message: string,
    readonly remoteStack: string | undefined,
  ) {
    super(`${remoteName}: ${message}`);
    this.name = 'ThreadTaskError';
  }
}

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

interface Slot {
  worker: Worker;
  pending: Map<number, Pending>;
  /** Resolved once the thread has loaded its task module (BOOT says so). */
  ready: Promise<void>;
}

/** What a worker answers (see BOOT). */
type Answer =
  { id: number; result: unknown } | { id: number; error: { name: string; message: string; stack?: string } };

/**
 * Every worker's entry, evaluated as a script. A worker does not get the parent's --import=tsx
 * hooks (on Node 20 under `node --import=tsx`, as tap runs the tests, it could not load a .ts file),
 * so it registers tsx itself (resolved here, so that the worker's directory does not matter), then
 * imports the task module, says it is ready, and answers each `{ id, request }` with `{ id, result }`
 * or `{ id, error }`.
 */
const BOOT = `
const { parentPort, workerData } = require('node:worker_threads');
(async () => {
  const { register } = await import(workerData.tsx);
  register();
  const { handle } = await import(workerData.module);
  parentPort.on('message', async ({ id, request }) => {
    try {
      parentPort.postMessage({ id, result: await handle(request) });
    } catch (e) {
      const error = e instanceof Error ? e : new Error(String(e));
      parentPort.postMessage({ id, error: { name: error.name, message: error.message, stack: error.stack } });
    }
  });
  parentPort.postMessage({ ready: true });
})().catch((e) => {
  throw e;
});
`;
const TSX_API = import.meta.resolve('tsx/esm/api');

export class ThreadPool<Req, Res> {
  private readonly slots: Array<Slot | null>;
  private nextId = 1;
  private closed = false;
  private started = 0;

  /** `module`: the task module's URL (exports `handle(request: Req): Res`); `size`: threads, at least 1. */
  constructor(
    private readonly module: URL,
    readonly size: number,
  ) {
    if (!Number.isInteger(size) || size < 1)
      throw new ThreadPoolError(`a pool needs at least one thread, not ${size}`);
    this.slots = Array.from({ length: size }, () => null);
  }

  /** Runs one task on the least busy thread (a thread is started at its first task). */
  run(request: Req): Promise<Res> {
    if (this.closed) return Promise.reject(new ThreadPoolError('the thread pool is closed'));
    const slot = this.leastBusy();
    const id = this.nextId++;
    return new Promise<Res>((resolve, reject) => {
      if (slot.pending.size === 0) slot.worker.ref();
      slot.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      slot.worker.postMessage({ id, request });
    });
  }

  /**
   * Starts every thread and resolves once all have loaded their task module (about a second on a
   * busy machine: tsx and the module's imports). Callers that can work in their own thread
   * meanwhile do, and hand work to the pool once it is ready.
   */
  warm(): Promise<void> {
    if (this.closed) return Promise.reject(new ThreadPoolError('the thread pool is closed'));
    for (let i = 0; i < this.slots.length; i++) this.slots[i] ??= this.start(i);
    return Promise.all(this.slots.map((s) => s!.ready)).then(() => undefined);
  }

  /** True once every thread has loaded its task module (and none has died since). */
  get isWarm(): boolean {
    return this.started === this.size;
  }

  /** Stops every thread; tasks in hand are rejected. */
  async close(): Promise<void> {
    this.closed = true;
    const slots = this.slots.splice(0).filter((s): s is Slot => s !== null);
    for (const slot of slots) this.fail(slot, new ThreadPoolError('the thread pool was closed'));
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  private leastBusy(): Slot {
    let best = -1;
    for (let i = 0; i < this.slots.length; i++) {
      const slot = this.slots[i];
      // An unstarted slot is the least busy there is: start threads before doubling up on one.
      if (!slot) return (this.slots[i] = this.start(i));
      if (best < 0 || slot.pending.size < this.slots[best]!.pending.size) best = i;
    }
    return this.slots[best]!;
  }

  private start(index: number): Slot {
    const worker = new Worker(BOOT, { eval: true, workerData: { module: this.module.href, tsx: TSX_API } });
    let markReady!: () => void;
    let markFailed!: (e: Error) => void;
    const ready = new Promise<void>((resolve, reject) => {
      markReady = resolve;
      markFailed = reject;
    });
    ready.catch(() => undefined); // a failed start also fails the tasks sent to it
    const slot: Slot = { worker, pending: new Map(), ready };
    worker.on('message', (answer: Answer | { ready: true }) => {
      if ('ready' in answer) {
        if (slot.pending.size === 0) worker.unref();
        this.started++;
        return markReady();
      }
      const pending = slot.pending.get(answer.id);
      if (!pending) return;
      slot.pending.delete(answer.id);
      if (slot.pending.size === 0) worker.unref();
      if ('error' in answer)
        pending.reject(new ThreadTaskError(answer.error.name, answer.error.message, answer.error.stack));
      else pending.resolve(answer.result);
    });
    // A thread that dies (a load error, an uncaught throw, out of memory) fails the tasks it held;
    // its slot is emptied so that the next task starts a fresh thread.
    let isLost = false;
    const lost = (error: Error) => {
      markFailed(error);
      if (!isLost && this.slots[index] === slot) {
        isLost = true;
        this.slots[index] = null;
        slot.ready.then(
          () => this.started--,
          () => undefined,
        );
      }
      this.fail(slot, error);
    };
    worker.on('error', (e: Error) => lost(e));
    worker.on('exit', (code) => lost(new ThreadPoolError(`a worker thread exited (code ${code})`)));
    // Referenced while it starts (a caller may be waiting on `warm` alone), unreferenced once ready
    // and idle. (Adding a 'message' listener refs a worker: unref only after the listeners.)
    return slot;
  }

  private fail(slot: Slot, error: Error): void {
    const pending = [...slot.pending.values()];
    slot.pending.clear();
    slot.worker.unref();
    for (const p of pending) p.reject(error);
  }
}
