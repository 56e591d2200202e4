import { fork, type ChildProcess } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * Request/response over the Node IPC channel between the bench runner and its children (the load
 * generator, the services under test, the reference servers). A child exits when the channel
 * closes, so a runner that dies leaves no orphan behind.
 */
interface Call {
  id: number;
  type: string;
  payload?: unknown;
}
type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string };

export type Handler = (payload: never) => Promise<unknown>;

/** Child side: answers the runner's calls with `handlers`; says `hello` once listening. */
export function serve(handlers: Record<string, Handler>): void {
  if (!process.send) throw new Error('this script runs as a child of bench/run.ts (no IPC channel)');
  process.on('message', (message: Call) => {
    const handler = handlers[message.type];
    const send = (reply: Reply) => {
      if (process.connected) process.send!(reply);
    };
    if (!handler) {
      send({ id: message.id, ok: false, error: `unknown call ${message.type}` });
      return;
    }
    handler(message.payload as never).then(
      (result) => send({ id: message.id, ok: true, result: result ?? null }),
      (e: unknown) =>
        send({ id: message.id, ok: false, error: e instanceof Error ? (e.stack ?? e.message) : String(e) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ hello: true });
}

export interface Child {
  name: string;
  pid: number;
  logFile: string;
  call<T>(type: string, payload?: unknown, timeoutMs?: number): Promise<T>;
  /** Asks it to stop (`stop` call), then ends the channel; SIGKILL if it has not exited in time. */
  stop(timeoutMs?: number): Promise<void>;
  exited: Promise<number | null>;
}

/** Forks `script` (a bench/*.ts file) with tsx, its output appended to `logFile`. */
export async function forkChild(
  script: string,
  args: string[],
  options: { name: string; logFile: string; env?: Record<string, string>; profileDir?: string },
): Promise<Child> {
  const path = fileURLToPath(new URL(`../${script}`, import.meta.url));
  const fd = openSync(options.logFile, 'a');
  const proc: ChildProcess = fork(path, args, {
    stdio: ['ignore', fd, fd, 'ipc'],
    env: { ...process.env, ...options.env },
    // tsx's loader (inherited) plus, when asked, a V8 CPU profile written at exit.
    execArgv: [
      ...process.execArgv,
      ...(options.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${options.profileDir}`] : []),
    ],
  });
  closeSync(fd);
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  let nextId = 1;
  proc.on('message', (m: Reply | { hello: true }) => {
    if ('hello' in m) return;
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (m.ok) p.resolve(m.result);
    else p.reject(new Error(`${options.name}: ${m.error}`));
  });
  void exited.then((code) => {
    for (const p of pending.values())
      p.reject(new Error(`${options.name} exited (code ${code}); see ${options.logFile}`));
    pending.clear();
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${options.name} did not start within 60 s; see ${options.logFile}`)),
      60_000,
    );
    proc.on('message', (m: { hello?: boolean }) => {
      if (m.hello) {
        clearTimeout(timer);
        resolve();
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${options.name} exited (code ${code}) before it started; see ${options.logFile}`));
    });
  });

  const call = <T>(type: string, payload?: unknown, timeoutMs = 300_000): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const id = nextId++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`${options.name}: no answer to ${type} within ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v as T)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      if (!proc.connected) {
        pending.delete(id);
        clearTimeout(timer);
        reject(new Error(`${options.name} is gone; see ${options.logFile}`));
        return;
      }
      proc.send({ id, type, payload } satisfies Call);
    });

  let stopping: Promise<void> | null = null;
  return {
    name: options.name,
    pid: proc.pid!,
    logFile: options.logFile,
    call,
    exited,
    stop(timeoutMs = 20_000) {
      stopping ??= (async () => {
        if (proc.exitCode !== null || proc.signalCode !== null) return;
        await call('stop', undefined, timeoutMs).catch(() => undefined);
        if (proc.connected) proc.disconnect();
        const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      })();
      return stopping;
    },
  };
}
