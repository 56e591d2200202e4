import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './ports.ts';

type Teardown = { teardown(fn: () => Promise<void> | void): void };

/**
 * A server process owned by one test (NATS, Redis, PostgreSQL...), on a free port, that the test
 * may kill, pause, resume and restart. The shared services on the standard ports are never touched.
 */
export interface OwnedServer {
  port: number;
  url: string;
  pid(): number | undefined;
  kill(signal?: NodeJS.Signals): Promise<void>;
  pause(): void;
  resume(): void;
  /** Starts the process again on the same port (and the same data directory). */
  start(): Promise<void>;
  stop(): Promise<void>;
}

async function ownServer(
  name: string,
  urlOf: (port: number) => string,
  argsOf: (port: number, dir: string) => { command: string; args: string[] },
  t?: Teardown,
): Promise<OwnedServer> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), `toolbus-${name}-`));
  let child: ChildProcess | null = null;

  const start = async () => {
    const { command, args } = argsOf(port, dir);
    const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    child = proc;
    try {
      await waitForPort(port, 15_000);
    } catch (e) {
      proc.kill('SIGKILL');
      throw new Error(`${name} did not start on port ${port}: ${stderr}`, { cause: e });
    }
  };
  const kill = async (signal: NodeJS.Signals = 'SIGKILL') => {
    const proc = child;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGCONT');
    proc.kill(signal);
    await exited;
    child = null;
  };
  const server: OwnedServer = {
    port,
    url: urlOf(port),
    pid: () => child?.pid,
    kill,
    pause: () => child?.kill('SIGSTOP'),
    resume: () => child?.kill('SIGCONT'),
    start,
    async stop() {
      await kill('SIGTERM');
      await rm(dir, { recursive: true, force: true });
    },
  };
  await start();
  t?.teardown(() => server.stop());
  return server;
}

/** nats-server with JetStream, its store in a temporary directory that survives restarts. */
export const startNats = (t?: Teardown) =>
  ownServer(
    'nats',
    (port) => `nats://127.0.0.1:${port}`,
    (port, dir) => ({
      command: process.env['NATS_SERVER_BIN'] ?? 'nats-server',
      args: ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir],
    }),
    t,
  );

/** redis-server that keeps nothing on disk (as the shared one). */
export const startRedis = (t?: Teardown) =>
  ownServer(
    'redis',
    (port) => `redis://127.0.0.1:${port}`,
    (port, dir) => ({
      command: process.env['REDIS_SERVER_BIN'] ?? 'redis-server',
      args: ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
    }),
    t,
  );
