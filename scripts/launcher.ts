import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/**
 * Starts Toolbus services as child processes, as in production: one process per service, each
 * configured by environment variables only. Used by `npm start` (for a person: readable logs,
 * clean stop on Ctrl-C) and by the acceptance tests (logs collected for assertions).
 */
export type ServiceName = 'dispatcher' | 'projector' | 'notifier' | 'auditor' | 'gateway' | 'console';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PORT_VARS: Record<ServiceName, string> = {
  dispatcher: 'DISPATCHER_PORT',
  projector: 'PROJECTOR_PORT',
  notifier: 'NOTIFIER_PORT',
  auditor: 'AUDITOR_PORT',
  gateway: 'GATEWAY_PORT',
  console: 'CONSOLE_PORT',
};

/** The operator console forwards to the services started beside it (services/console/config.ts). */
const consoleUpstreams = (ports: LaunchOptions['ports']): Record<string, string> =>
  Object.fromEntries(
    (['dispatcher', 'projector', 'auditor'] as const)
      .filter((name) => ports[name] !== undefined)
      .map((name) => [`CONSOLE_${name.toUpperCase()}_URL`, `http://127.0.0.1:${ports[name]}`]),
  );

export interface LogLine {
  service: ServiceName;
  at: number;
  line: string;
}

export interface LaunchOptions {
  services: ServiceName[];
  /** Environment shared by every service (URLs, secrets); ports are set per service. */
  env: Record<string, string>;
  /** Environment of one service only (its NATS identity, for one). */
  serviceEnv?: Partial<Record<ServiceName, Record<string, string>>>;
  ports: Partial<Record<ServiceName, number>>;
  /** Called with each log line as it arrives. */
  onLog?: (line: LogLine) => void;
  readyTimeoutMs?: number;
  /**
   * Starts a service again when it crashes (exits with an error, or killed by a signal), after 1 s,
   * doubling up to 30 s while it keeps failing (back to 1 s once it has run a minute); `kill`
   * and `stop` are not restarted. `npm start` sets it; tests that kill services on purpose do not.
   */
  restart?: boolean;
}

/** The first wait before a service is started again, its doubling limit, and the run that resets it. */
const RESTART_FIRST_MS = 1_000;
const RESTART_MAX_MS = 30_000;
const RESTART_RESET_AFTER_MS = 60_000;

export interface RunningService {
  name: ServiceName;
  port: number;
  url: string;
  process(): ChildProcess | null;
}

export interface Stack {
  services: Record<ServiceName, RunningService>;
  logs: LogLine[];
  /** Kills one service (SIGKILL unless told otherwise) and waits for it to exit. */
  kill(name: ServiceName, signal?: NodeJS.Signals): Promise<void>;
  /** Starts one service again and waits until it is ready. */
  start(name: ServiceName, extraEnv?: Record<string, string>): Promise<void>;
  restart(name: ServiceName): Promise<void>;
  stop(): Promise<void>;
}

export async function launchStack(options: LaunchOptions): Promise<Stack> {
  const logs: LogLine[] = [];
  const children = new Map<ServiceName, ChildProcess>();
  const services = {} as Record<ServiceName, RunningService>;
  /** Processes this stack stopped itself (kill, stop): their exit is not a crash. */
  const stoppedHere = new WeakSet<ChildProcess>();
  const restarts = new Map<ServiceName, { failures: number; timer?: NodeJS.Timeout }>();
  let stopping = false;

  const record = (service: ServiceName, line: string) => {
    const entry = { service, at: Date.now(), line };
    logs.push(entry);
    options.onLog?.(entry);
  };

  const start = async (name: ServiceName, extraEnv: Record<string, string> = {}) => {
    const port = options.ports[name];
    if (port === undefined) throw new Error(`no port for ${name}`);
    const child = spawn(process.execPath, ['--import', 'tsx', `services/${name}/main.ts`], {
      cwd: ROOT,
      env: {
        ...process.env,
        ...(name === 'console' ? consoleUpstreams(options.ports) : {}),
        ...options.env,
        ...options.serviceEnv?.[name],
        [PORT_VARS[name]]: String(port),
        ...extraEnv,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.set(name, child);
    const startedAt = Date.now();
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on('line', (line) => record(name, line));
    }
    child.once('exit', (code, signal) => {
      if (children.get(name) === child) children.delete(name);
      record(name, `[process exited: ${signal ?? `code ${code}`}]`);
      // Any exit the stack did not ask for is restarted: a crash, a signal, and also a clean stop
      // (code 0) on a SIGTERM from someone else, which would otherwise leave the service down with
      // the stack looking healthy. A terminal's Ctrl-C reaches the services and the launcher at
      // once: a restart a service's exit schedules before the launcher knows it stops waits 1 s
      // at least, and the launcher's stop cancels it.
      if (options.restart && !stopping && !stoppedHere.has(child)) restartLater(name, Date.now() - startedAt);
    });
    try {
      await waitReady(name, `http://127.0.0.1:${port}/health/ready`, child, options.readyTimeoutMs ?? 30_000);
    } catch (e) {
      // The service's own words say why (NATS refused, PostgreSQL unreachable, a bad variable).
      const said = logs
        .filter((l) => l.service === name)
        .map((l) => reasonOf(l.line))
        .filter((r): r is string => r !== null)
        .slice(-5);
      throw new Error(
        `${(e as Error).message}${said.length > 0 ? `\n${name} said:\n  ${said.join('\n  ')}` : ''}`,
        { cause: e },
      );
    }
  };

  const restartLater = (name: ServiceName, ranMs: number) => {
    const r = restarts.get(name) ?? { failures: 0 };
    restarts.set(name, r);
    if (ranMs >= RESTART_RESET_AFTER_MS) r.failures = 0;
    const waitMs = Math.min(RESTART_MAX_MS, RESTART_FIRST_MS * 2 ** r.failures);
    r.failures++;
    record(name, `[restarting in ${waitMs / 1000} s]`);
    clearTimeout(r.timer);
    r.timer = setTimeout(() => {
      r.timer = undefined;
      if (stopping || children.has(name)) return;
      start(name).then(
        () => record(name, '[restarted: ready]'),
        // An exit before it was ready schedules the next try itself (the exit handler above).
        (e: unknown) => record(name, `[restart: ${(e as Error).message.split('\n')[0]}]`),
      );
    }, waitMs);
  };

  const kill = async (name: ServiceName, signal: NodeJS.Signals = 'SIGKILL') => {
    const child = children.get(name);
    clearTimeout(restarts.get(name)?.timer);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    stoppedHere.add(child);
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };

  for (const name of options.services) {
    const port = options.ports[name]!;
    services[name] = {
      name,
      port,
      url: `http://127.0.0.1:${port}`,
      process: () => children.get(name) ?? null,
    };
  }
  const stack: Stack = {
    services,
    logs,
    kill,
    start,
    restart: async (name) => {
      await kill(name, 'SIGTERM');
      await start(name);
    },
    stop: async () => {
      stopping = true;
      for (const r of restarts.values()) clearTimeout(r.timer);
      await Promise.all([...children.keys()].map((name) => kill(name, 'SIGTERM')));
    },
  };
  try {
    await Promise.all(options.services.map((name) => start(name)));
  } catch (e) {
    await stack.stop();
    throw e;
  }
  return stack;
}

/** A log line's message and error, when it is a warning or worse (pino JSON), else null. */
function reasonOf(line: string): string | null {
  try {
    const j = JSON.parse(line) as {
      level?: number;
      msg?: string;
      err?: { message?: string };
      problems?: string[];
      checks?: unknown;
    };
    if ((j.level ?? 0) < 40) return null;
    const detail = j.err?.message ?? j.problems?.join('; ') ?? (j.checks ? JSON.stringify(j.checks) : '');
    const msg = j.msg ?? '';
    if (!detail || detail.startsWith(msg)) return detail || msg;
    return `${msg}: ${detail}`;
  } catch {
    return line.trim() && !line.startsWith('[process exited') ? line.trim() : null;
  }
}

async function waitReady(name: string, url: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${name} exited before it was ready (${child.signalCode ?? `code ${child.exitCode}`})`);
    }
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      if (res.ok) return;
      last = `${res.status} ${await res.text()}`;
    } catch (e) {
      last = (e as Error).message;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${name} not ready at ${url} after ${timeoutMs} ms: ${last}`);
}

/** A pino JSON line as `time service level message {fields}`; other lines as they are. */
export function prettyLine({ service, line }: { service: string; line: string }): string {
  try {
    const {
      level,
      time,
      msg,
      name: _name,
      pid: _pid,
      hostname: _host,
      ...rest
    } = JSON.parse(line) as Record<string, unknown>;
    const levels: Record<number, string> = {
      10: 'trace',
      20: 'debug',
      30: 'info',
      40: 'WARN',
      50: 'ERROR',
      60: 'FATAL',
    };
    const fields = Object.keys(rest).length > 0 ? ` ${JSON.stringify(rest)}` : '';
    const at = typeof time === 'number' ? new Date(time).toISOString().slice(11, 23) : '';
    return `${at} ${service.padEnd(10)} ${(levels[level as number] ?? String(level)).padEnd(5)} ${typeof msg === 'string' ? msg : JSON.stringify(msg ?? '')}${fields}`;
  } catch {
    return `${''.padEnd(12)} ${service.padEnd(10)} ${line}`;
  }
}
