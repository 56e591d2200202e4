import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/**
 * Starts Toolbus services as child processes, as in production: one process per service, each
 * configured by environment variables only. Used by `npm start` (for a person: readable logs,
 * clean stop on Ctrl-C) and by the acceptance tests (logs collected for assertions).
 */
export type ServiceName = 'dispatcher' | 'projector' | 'notifier' | 'auditor' | 'gateway';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PORT_VARS: Record<ServiceName, string> = {
  dispatcher: 'DISPATCHER_PORT',
  projector: 'PROJECTOR_PORT',
  notifier: 'NOTIFIER_PORT',
  auditor: 'AUDITOR_PORT',
  gateway: 'GATEWAY_PORT',
};

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
}

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
        ...options.env,
        ...options.serviceEnv?.[name],
        [PORT_VARS[name]]: String(port),
        ...extraEnv,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.set(name, child);
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on('line', (line) => record(name, line));
    }
    child.once('exit', (code, signal) => {
      if (children.get(name) === child) children.delete(name);
      record(name, `[process exited: ${signal ?? `code ${code}`}]`);
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

  const kill = async (name: ServiceName, signal: NodeJS.Signals = 'SIGKILL') => {
    const child = children.get(name);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
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
