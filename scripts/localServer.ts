/**
 * One of the servers `npm start` runs for the stack (nats-server, PostgreSQL, Redis), kept running:
 * when it exits without being asked to (killed, crashed, out of memory), it is started again with
 * the same command after a pause, as the launcher does for the services. The services reconnect
 * by themselves; what the server keeps on disk (JetStream's requests, PostgreSQL's events) is there
 * again, and Redis, which keeps nothing, comes back empty (the event store decides then: docs/reliability.md).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';

export interface LocalServer {
  /** The process running now; undefined while it is being started again, and once stopped. */
  readonly pid: number | undefined;
  /**
   * No more starts again from now on (the stack is stopping: a terminal's Ctrl-C reaches the
   * servers too, and their exits are then no crash). Synchronous.
   */
  hold(): void;
  /** Stops it for good (SIGTERM, then waits for it), and cleans up after it. Every call waits. */
  stop(): Promise<void>;
}

export interface ServerSpec {
  /** Its name in messages: "nats-server", "PostgreSQL", "Redis". */
  what: string;
  command: { command: string; args: string[] };
  /** Whether it accepts connections. */
  isUp: () => Promise<boolean>;
  /** Each line it prints. */
  onLine: (line: string) => void;
  /** What happens to it: an exit, a start again. */
  onNotice: (line: string) => void;
  /** Runs once it has stopped for good (a socket directory to remove). */
  cleanup?: () => Promise<void>;
  /** The pause before the first start again, doubled after each failed one up to `maxDelayMs`. */
  firstDelayMs?: number;
  maxDelayMs?: number;
}

/** Up this long after a start again, it is well again: the next exit waits the first pause. */
const HEALTHY_AFTER_MS = 30_000;

/** Whether something accepts connections on a TCP port of the loopback, or on a Unix socket. */
export const accepts = (where: number | string): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = typeof where === 'number' ? connect(where, '127.0.0.1') : connect(where);
    socket.once('connect', () => {
      resolve(true);
      // Close politely: read (and drop) what the server says at once (nats-server's INFO) and
      // half-close. Destroyed with that greeting unread, the socket sends a reset, which
      // nats-server logged on every start as an [ERR] TLS handshake error. Destroyed anyway after
      // a second if the server does not close its side.
      socket.resume();
      socket.end();
      setTimeout(() => socket.destroy(), 1000).unref();
    });
    socket.once('error', () => (socket.destroy(), resolve(false)));
  });

const duration = (ms: number) => (ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`);

const exitText = (code: number | null, signal: NodeJS.Signals | null) =>
  signal ? `signal ${signal}` : `code ${code}`;

/**
 * Starts the server and resolves once it accepts connections; rejects, with what it printed, when
 * it stops before that. From then on it is started again whenever it exits until `stop()`.
 */
export async function startSupervised(spec: ServerSpec): Promise<LocalServer> {
  const firstDelayMs = spec.firstDelayMs ?? 500;
  const maxDelayMs = spec.maxDelayMs ?? 10_000;
  let current: ChildProcess | undefined;
  let stopping = false;
  let pause: { timer: NodeJS.Timeout; resolve: () => void } | undefined;

  /** Runs it once; resolves when it accepts connections, rejects (with its output) when it exits first. */
  const run = async (): Promise<ChildProcess> => {
    const { command, args } = spec.command;
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    current = child;
    // A failed spawn (no such file, no memory) is an 'error' event: an exception if unheard.
    let failed: Error | undefined;
    child.on('error', (e) => (failed ??= e));
    const closed = new Promise((r) => child.once('close', r));
    let output = '';
    for (const stream of [child.stdout, child.stderr]) {
      stream.on('data', (d: Buffer) => {
        const text = d.toString();
        output = (output + text).slice(-4000);
        for (const line of text.split('\n')) if (line.trim()) spec.onLine(line);
      });
    }
    for (;;) {
      if (failed) {
        if (current === child) current = undefined;
        throw new Error(`${spec.what} could not be started (${command}): ${failed.message}`);
      }
      if (child.exitCode !== null || child.signalCode !== null) {
        // Its last words may still be in the pipes (a child it left may hold them: not for long).
        await Promise.race([closed, new Promise((r) => setTimeout(r, 1000).unref())]);
        if (current === child) current = undefined;
        throw new Error(
          `${spec.what} stopped at start (${exitText(child.exitCode, child.signalCode)}):\n${output}`,
        );
      }
      if (stopping) return child;
      if (await spec.isUp()) return child;
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      pause = { timer: setTimeout(resolve, ms), resolve };
    }).finally(() => (pause = undefined));

  /** The pause before the next start again: doubled by each, back to the first once it stays up. */
  let delay = firstDelayMs;

  /** From now on an exit of `child` that nobody asked for starts it again. */
  const watch = (child: ChildProcess) => {
    const upSince = Date.now();
    const exited = (code: number | null, signal: NodeJS.Signals | null) => {
      if (stopping || child !== current) return;
      current = undefined;
      if (Date.now() - upSince >= HEALTHY_AFTER_MS) delay = firstDelayMs;
      void restart(exitText(code, signal));
    };
    // It may have gone while its start was being confirmed.
    if (child.exitCode !== null || child.signalCode !== null) exited(child.exitCode, child.signalCode);
    else child.once('exit', exited);
  };

  /** After an exit nobody asked for: starts it again until it is up (or the stack stops). */
  const restart = async (why: string) => {
    const downSince = Date.now();
    for (;;) {
      spec.onNotice(`${spec.what} exited (${why}); starting it again in ${duration(delay)}`);
      await sleep(delay);
      delay = Math.min(delay * 2, maxDelayMs);
      if (stopping) return;
      try {
        const child = await run();
        if (stopping) return;
        spec.onNotice(`${spec.what} is running again (down ${duration(Date.now() - downSince)})`);
        watch(child);
        return;
      } catch (e) {
        if (stopping) return;
        // Its own words for why it stopped (the last lines it printed).
        why = (e as Error).message.trim().split('\n').slice(-2).join(' / ');
      }
    }
  };

  watch(await run());
  const hold = () => {
    stopping = true;
    if (pause) {
      clearTimeout(pause.timer);
      pause.resolve();
    }
  };
  let stopped: Promise<void> | undefined;
  return {
    get pid() {
      return current?.pid;
    },
    hold,
    stop() {
      stopped ??= (async () => {
        hold();
        const child = current;
        if (child && child.exitCode === null && child.signalCode === null) {
          const exited = new Promise((r) => child.once('exit', r));
          child.kill('SIGTERM');
          await exited;
        }
        current = undefined;
        await spec.cleanup?.();
      })();
      return stopped;
    },
  };
}
