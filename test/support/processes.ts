import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createIdentity, natsEnvOf, natsServerConfig, type Identity } from '../../scripts/nats-auth.ts';
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
  ready?: (port: number) => Promise<void>,
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
      await ready?.(port);
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

/** The identities a secured test NATS knows: one per part of Toolbus, and agents of the test's. */
export interface NatsIdentities {
  dispatcher: Identity;
  notifier: Identity;
  /** Serves the example and test tools (every tool the dispatcher's test set may name). */
  worker: Identity;
  /** The test's agent (`TestStack.nc`). */
  agent: Identity;
  /** A second agent: another program on the same bus. */
  otherAgent: Identity;
  /** A worker allowed only the tool `intruder_tool`. */
  narrowWorker: Identity;
  /** The MCP gateway (services/gateway): an agent's rights. */
  gateway: Identity;
}

export type SecuredNats = OwnedServer & {
  identities: NatsIdentities;
  /** Each service's environment for its identity (launchStack's `serviceEnv`). */
  serviceEnv: {
    dispatcher: Record<string, string>;
    notifier: Record<string, string>;
    gateway: Record<string, string>;
  };
};

/**
 * nats-server with JetStream and Toolbus's generated authorization (scripts/nats-auth.ts), as
 * `npm start` runs it: no client without one of the identities' nkeys gets in, and each gets only
 * its subjects. `workerTools` are the tools the `worker` identity may serve.
 */
export async function startSecuredNats(t: Teardown | undefined, workerTools: string[]): Promise<SecuredNats> {
  const identities: NatsIdentities = {
    dispatcher: createIdentity('dispatcher', { kind: 'dispatcher' }),
    notifier: createIdentity('notifier', { kind: 'notifier' }),
    worker: createIdentity('worker', { kind: 'worker', tools: workerTools }),
    agent: createIdentity('agent', { kind: 'agent' }),
    otherAgent: createIdentity('other-agent', { kind: 'agent' }),
    narrowWorker: createIdentity('narrow-worker', { kind: 'worker', tools: ['intruder_tool'] }),
    gateway: createIdentity('gateway', { kind: 'agent' }),
  };
  const server = await ownServer(
    'nats-secured',
    (port) => `nats://127.0.0.1:${port}`,
    (port, dir) => {
      const conf = join(dir, 'nats.conf');
      writeFileSync(
        conf,
        natsServerConfig({ port, storeDir: join(dir, 'js'), identities: Object.values(identities) }),
      );
      return { command: process.env['NATS_SERVER_BIN'] ?? 'nats-server', args: ['-c', conf] };
    },
    t,
  );
  return Object.assign(server, {
    identities,
    serviceEnv: {
      dispatcher: natsEnvOf(identities.dispatcher),
      notifier: natsEnvOf(identities.notifier),
      gateway: natsEnvOf(identities.gateway),
    },
  });
}

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

/**
 * A PostgreSQL server of the test's own (initdb into a temporary directory, trust auth,
 * synchronous_commit on), that the test may kill and restart. Runs as the `postgres` user when
 * the test runs as root, as PostgreSQL refuses root.
 */
export async function startPostgres(t?: Teardown): Promise<OwnedServer & { databaseUrl: string }> {
  const { execFileSync } = await import('node:child_process');
  const { readdirSync, chownSync, mkdirSync } = await import('node:fs');
  const version = readdirSync('/usr/lib/postgresql').sort().pop();
  const bin = (name: string) => `/usr/lib/postgresql/${version}/bin/${name}`;
  const asRoot = process.getuid?.() === 0;
  const uid = asRoot ? Number(execFileSync('id', ['-u', 'postgres']).toString().trim()) : undefined;
  const gid = asRoot ? Number(execFileSync('id', ['-g', 'postgres']).toString().trim()) : undefined;
  const wrap = (command: string, args: string[]) =>
    asRoot
      ? {
          command: 'setpriv',
          args: [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--', command, ...args],
        }
      : { command, args };
  let initialised = false;
  const server = await ownServer(
    'postgres',
    (port) => `postgres://postgres@127.0.0.1:${port}/postgres`,
    (port, dir) => {
      const data = join(dir, 'data');
      if (!initialised) {
        if (asRoot) chownSync(dir, uid!, gid!);
        mkdirSync(data, { recursive: true });
        if (asRoot) chownSync(data, uid!, gid!);
        const init = wrap(bin('initdb'), [
          '-D',
          data,
          '-U',
          'postgres',
          '--auth=trust',
          '-E',
          'UTF8',
          '--no-sync',
        ]);
        execFileSync(init.command, init.args, { stdio: 'ignore' });
        initialised = true;
      }
      return wrap(bin('postgres'), [
        '-D',
        data,
        '-p',
        String(port),
        '-k',
        dir,
        '-c',
        'listen_addresses=127.0.0.1',
        '-c',
        'synchronous_commit=on',
        '-c',
        'fsync=on',
        '-c',
        'max_connections=200',
      ]);
    },
    t,
    async (port) => {
      const { default: pg } = await import('pg');
      for (let i = 0; ; i++) {
        const client = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${port}/postgres` });
        try {
          await client.connect();
          await client.query('select 1');
          return;
        } catch (e) {
          if (i > 300) throw e;
          await new Promise((r) => setTimeout(r, 100));
        } finally {
          await client.end().catch(() => undefined);
        }
      }
    },
  );
  return Object.assign(server, { databaseUrl: server.url });
}
