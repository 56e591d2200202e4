import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { jetstream as jetstreamNames } from '../../contracts/index.ts';
import {
  createClusterPassword,
  createIdentity,
  natsEnvOf,
  natsServerConfig,
  type Identity,
} from '../../scripts/nats-auth.ts';
import { freePort, waitForPort } from './ports.ts';
import { startProxy, type TcpProxy } from './proxy.ts';

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
  /** Stops the process (SIGSTOP); resolves once every one of its threads has stopped. */
  pause(): Promise<void>;
  resume(): void;
  /** Starts the process again on the same port (and the same data directory). */
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Servers of this test process still running. A test that fails before its teardown (an error
 * thrown in it, a timeout) would otherwise leave them running once the process exits: they are
 * killed then. (A test process killed with SIGKILL runs no exit handler; nothing can help there.)
 */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
});

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
    running.add(proc);
    proc.once('exit', () => running.delete(proc));
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
    async pause() {
      const proc = child;
      if (!proc?.pid) return;
      proc.kill('SIGSTOP');
      await stopped(proc.pid);
    },
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

/**
 * Waits until every thread of `pid` is stopped. SIGSTOP is not instant: one thread takes the signal
 * and stops the others, and on a busy machine another thread, woken by a client's bytes, can run
 * first and answer them (an acknowledgement 1 ms after the "pause", seen here).
 */
async function stopped(pid: number): Promise<void> {
  const isStopped = async () => {
    const threads = await readdir(`/proc/${pid}/task`).catch(() => []);
    const states = await Promise.all(
      threads.map((tid) =>
        readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').then(
          // The state follows the command name, which is in parentheses and may hold spaces.
          (stat) => stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3),
          () => 'T', // the thread ended
        ),
      ),
    );
    return states.every((state) => state === 'T' || state === 't');
  };
  while (!(await isStopped())) await new Promise((r) => setTimeout(r, 1));
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
  /** The MCP tool provider: may serve every tool of the namespaces given to `startSecuredNats`. */
  mcpTools: Identity;
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
export async function startSecuredNats(
  t: Teardown | undefined,
  workerTools: string[],
  mcpNamespaces: string[] = [],
): Promise<SecuredNats> {
  const identities = createNatsIdentities(workerTools, mcpNamespaces);
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
  return Object.assign(server, { identities, serviceEnv: serviceEnvOf(identities) });
}

function createNatsIdentities(workerTools: string[], mcpNamespaces: string[]): NatsIdentities {
  return {
    dispatcher: createIdentity('dispatcher', { kind: 'dispatcher' }),
    notifier: createIdentity('notifier', { kind: 'notifier' }),
    worker: createIdentity('worker', { kind: 'worker', tools: workerTools }),
    agent: createIdentity('agent', { kind: 'agent' }),
    otherAgent: createIdentity('other-agent', { kind: 'agent' }),
    narrowWorker: createIdentity('narrow-worker', { kind: 'worker', tools: ['intruder_tool'] }),
    gateway: createIdentity('gateway', { kind: 'agent' }),
    mcpTools: createIdentity('mcp-tools', { kind: 'worker', tools: [], namespaces: mcpNamespaces }),
  };
}

const serviceEnvOf = (identities: NatsIdentities): SecuredNats['serviceEnv'] => ({
  dispatcher: natsEnvOf(identities.dispatcher),
  notifier: natsEnvOf(identities.notifier),
  gateway: natsEnvOf(identities.gateway),
});

/** What the cluster helper reads of a node's `/jsz`. */
interface Jsz {
  meta_cluster?: { leader?: string; replicas?: Array<{ name: string; current: boolean }> };
}

/** Polls `probe` until it gives a value (not undefined, no error), for up to a minute. */
export async function pollUntil<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`not reached in ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** One nats-server of a test cluster. */
export interface NatsClusterNode {
  /** Its server_name: what JetStream calls it (a stream's leader and replicas). */
  name: string;
  /** Where clients reach it: through its client proxy, so a partition can cut them off too. */
  url: string;
  /** The node's process (its real client port, kill, start again with the same store). */
  server: OwnedServer;
  /** Its monitoring address (`/healthz`, `/jsz`), not proxied. */
  monitorUrl: string;
  /**
   * Kills the node (SIGKILL by default); `start` brings it back with its store and resolves once
   * it has rejoined (`rejoined`). Its copies of streams catch up after that: wait for them.
   */
  kill(signal?: NodeJS.Signals): Promise<void>;
  start(): Promise<void>;
  /** Resolves once the node follows a JetStream meta leader (its `/jsz`). */
  rejoined(): Promise<void>;
  /**
   * Cuts the node off: its routes to every other node and its clients' connections go silent
   * (black-holed, not closed: what a lost network looks like). The process keeps running.
   */
  partition(): void;
  /** Ends the partition: the silent connections are dropped, so routes and clients connect afresh. */
  heal(): void;
}

export interface SecuredNatsCluster {
  nodes: NatsClusterNode[];
  /** Every node's client URL, comma-separated (what NATS_URL takes). */
  url: string;
  identities: NatsIdentities;
  serviceEnv: SecuredNats['serviceEnv'];
  /**
   * The node that leads `stream` (default the intake, TOOLBUS_REQUESTS) now, as JetStream says
   * (`streams.info(...).cluster.leader`); undefined while there is none (an election) or the
   * stream does not exist.
   */
  streamLeader(stream?: string): Promise<NatsClusterNode | undefined>;
  /**
   * Whether `stream` (default the intake) has a leader and every other node holds a current copy:
   * after a node rejoins or a partition heals, the cluster is whole again.
   */
  streamWhole(stream?: string): Promise<boolean>;
  /** Resolves once JetStream answers, with a meta leader that every node follows. */
  jetStreamReady(): Promise<void>;
}

/**
 * A JetStream cluster of `size` nats-servers with Toolbus's generated authorization (the same
 * identities and service environments as `startSecuredNats`), each node with its own store that
 * survives a kill. Every route between two nodes and every client connection goes through a TCP
 * proxy of the test (test/support/proxy.ts), so that `partition` can cut one node off without
 * touching the others. Resolves once JetStream answers.
 */
export async function startSecuredNatsCluster(
  t: Teardown,
  workerTools: string[],
  mcpNamespaces: string[] = [],
  size = 3,
): Promise<SecuredNatsCluster> {
  const identities = createNatsIdentities(workerTools, mcpNamespaces);
  const password = createClusterPassword();
  const names = Array.from({ length: size }, (_, i) => `n${i + 1}`);
  const clusterPorts = await Promise.all(names.map(() => freePort()));
  const monitorPorts = await Promise.all(names.map(() => freePort()));
  // One proxy per route direction (from -> to), so cutting a node off leaves the others' routes be.
  const routeProxies = new Map<string, TcpProxy>();
  for (let from = 0; from < size; from++) {
    for (let to = 0; to < size; to++) {
      if (from !== to) routeProxies.set(`${from}>${to}`, await startProxy(clusterPorts[to]!, t));
    }
  }
  const proxiesOf = (i: number) =>
    [...routeProxies].filter(([k]) => k.split('>').includes(String(i))).map(([, p]) => p);

  const nodes: NatsClusterNode[] = [];
  for (let i = 0; i < size; i++) {
    const server = await ownServer(
      `nats-${names[i]}`,
      (port) => `nats://127.0.0.1:${port}`,
      (port, dir) => {
        const conf = join(dir, 'nats.conf');
        const routes = names
          .map((_, to) => routeProxies.get(`${i}>${to}`))
          .filter((p): p is TcpProxy => p !== undefined)
          .map((p) => `127.0.0.1:${p.port}`);
        const text = natsServerConfig({
          port,
          monitorPort: monitorPorts[i]!,
          storeDir: join(dir, 'js'),
          identities: Object.values(identities),
          cluster: {
            serverName: names[i]!,
            name: 'toolbus-test',
            port: clusterPorts[i]!,
            routes,
            password,
            // Nodes tell each other where to connect; an address nothing listens on keeps every
            // route on the proxies configured above (a gossiped one would go around them).
            advertise: '127.0.0.1:1',
            // Clients stay on the proxied URLs they were given.
            advertiseToClients: false,
          },
        });
        writeFileSync(conf, text);
        return { command: process.env['NATS_SERVER_BIN'] ?? 'nats-server', args: ['-c', conf] };
      },
      t,
    );
    const clientProxy = await startProxy(server.port, t);
    const own = [clientProxy, ...proxiesOf(i)];
    const monitorUrl = `http://127.0.0.1:${monitorPorts[i]}`;
    // Not /healthz: nats-server 2.9 calls an idle consumer's replica "not current" for a long time.
    const rejoined = async () => {
      await pollUntil(`${names[i]} follows a JetStream meta leader`, async () => {
        const meta = ((await (await fetch(`${monitorUrl}/jsz`)).json()) as Jsz).meta_cluster;
        return meta?.leader ? true : undefined;
      });
    };
    nodes.push({
      name: names[i]!,
      url: clientProxy.url('nats'),
      server,
      monitorUrl,
      kill: (signal) => server.kill(signal),
      start: async () => {
        await server.start();
        await rejoined();
      },
      rejoined,
      partition: () => own.forEach((p) => p.set({ kind: 'blackhole' })),
      heal: () =>
        own.forEach((p) => {
          p.set({ kind: 'reset' });
          p.set({ kind: 'pass' });
        }),
    });
  }
  const url = nodes.map((n) => n.url).join(',');

  let nc: NatsConnection | undefined;
  const admin = async () => {
    nc ??= await connect({
      servers: nodes.map((n) => n.url),
      name: 'test-cluster-admin',
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      pingInterval: 2_000,
      inboxPrefix: `_INBOX.${identities.dispatcher.publicKey}`,
      authenticator: nkeyAuthenticator(new TextEncoder().encode(identities.dispatcher.seed)),
    });
    return nc;
  };
  t.teardown(async () => {
    await nc?.close();
  });

  const cluster: SecuredNatsCluster = {
    nodes,
    url,
    identities,
    serviceEnv: serviceEnvOf(identities),
    async streamLeader(stream = jetstreamNames.requestsStream) {
      try {
        const jsm = await jetstreamManager(await admin(), { timeout: 2_000 });
        const leader = (await jsm.streams.info(stream)).cluster?.leader;
        return nodes.find((n) => n.name === leader);
      } catch {
        return undefined;
      }
    },
    async streamWhole(stream = jetstreamNames.requestsStream) {
      try {
        const jsm = await jetstreamManager(await admin(), { timeout: 2_000 });
        const c = (await jsm.streams.info(stream)).cluster;
        const current = c?.replicas?.filter((r) => r.current).length ?? 0;
        return c?.leader !== undefined && current === size - 1;
      } catch {
        return false;
      }
    },
    async jetStreamReady() {
      // Before every node follows the meta leader, a replicated stream finds no place
      // ("no suitable peers for placement").
      await pollUntil('a JetStream meta leader that every node follows', async () => {
        for (const n of nodes) {
          const meta = ((await (await fetch(`${n.monitorUrl}/jsz`)).json()) as Jsz).meta_cluster;
          const followers = meta?.replicas?.filter((r) => r.current).length ?? 0;
          if (meta?.leader === n.name && followers === size - 1) return true;
        }
        return undefined;
      });
      await pollUntil('JetStream answers', async () => {
        const jsm = await jetstreamManager(await admin(), { timeout: 2_000 });
        return jsm.getAccountInfo();
      });
    },
  };
  await cluster.jetStreamReady();
  return cluster;
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
