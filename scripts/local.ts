/**
 * What `npm start` needs on a fresh machine and keeps in `.toolbus/` (git-ignored, readable by its
 * owner only): random secrets (`.toolbus/secrets.env`), one nkey per part of the stack
 * (`.toolbus/nats/<name>.nk`) and the nats-server configuration that authorizes them
 * (`.toolbus/nats/nats.conf`). Made once, reused after; delete `.toolbus/` to make new ones.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, readdirSync, statSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { toolsFromConfiguration } from '../lib/toolbusConfig.ts';
import { exampleTools } from '../services/dispatcher/tools/index.ts';
import { configuredMcpNamespaces } from '../services/mcp-tools/config.ts';
import {
  createClusterPassword,
  createIdentity,
  natsServerConfig,
  readIdentity,
  writeSeeds,
  type Identity,
  type Role,
} from './nats-auth.ts';
import { accepts, startSupervised, type LocalServer, type ServerSpec } from './localServer.ts';
import { localTls, type LocalTls } from './localTls.ts';

/** `.toolbus/` in the checkout, or TOOLBUS_DIR (a second stack beside the first, a test's own). */
export const LOCAL_DIR = process.env['TOOLBUS_DIR']
  ? resolve(process.env['TOOLBUS_DIR'])
  : fileURLToPath(new URL('../.toolbus/', import.meta.url));

/**
 * The secrets every service reads; generated, never a constant. PGPASSWORD is for a PostgreSQL
 * that this setup also creates (docker-compose); `npm start` uses the local one and ignores it.
 */
const SECRET_VARS = [
  'JWT_SECRET',
  'WORKER_SECRET',
  'AUDIT_SIGNING_KEY',
  'PGPASSWORD',
  'REDIS_PASSWORD',
] as const;

/**
 * The identities of a local stack. The `worker` serves the example tools and those of the
 * configuration file (`npm run worker`; lib/toolbusConfig.ts).
 */
const localIdentities = (workerTools: string[], mcpNamespaces: string[]): [string, Role][] => [
  ['dispatcher', { kind: 'dispatcher' }],
  ['notifier', { kind: 'notifier' }],
  ['worker', { kind: 'worker', tools: workerTools }],
  ['agent', { kind: 'agent' }],
  ['gateway', { kind: 'agent' }],
  // --- MCP tool provider (`npm run mcp-tools`): granted the namespaces of the configuration
  // file's mcpServers, read at each start (a server added later needs a restart).
  ['mcp-tools', { kind: 'worker', tools: [], namespaces: mcpNamespaces }],
];

export interface LocalSetup {
  secrets: Record<(typeof SECRET_VARS)[number], string>;
  identities: Record<string, Identity>;
  /** The seed file of identity `name` (for NATS_NKEY_SEED_FILE). */
  seedFile(name: string): string;
  natsConfig: string;
  natsStoreDir: string;
  /** With `cluster`: one configuration file per node (`npm run start:cluster`). */
  natsCluster: NatsClusterNode[];
  /** With `tls`: the CA a client trusts (NATS_TLS_CA), the server's certificate and key. */
  natsTls: LocalTls | undefined;
  /** True when this call made them (first start). */
  created: boolean;
  /** The folder everything is in. */
  dir: string;
}

export function parseEnv(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

export interface SetupOptions {
  /** Default `.toolbus/` in the checkout. */
  dir?: string;
  natsPort: number;
  /** Where nats-server listens (default 127.0.0.1). */
  natsHost?: string;
  /** JetStream's directory (default `<dir>/nats/jetstream`). */
  natsStoreDir?: string;
  /** nats-server's monitoring port (health checks), if any. */
  natsMonitorPort?: number;
  /** Also write `postgres-password` (world-readable inside `dir`) for a database container. */
  postgresPasswordFile?: boolean;
  /** Also write the configurations of the nodes of a JetStream cluster (`ClusterLayout`). */
  cluster?: ClusterLayout;
  /**
   * nats-server requires TLS of every client, and of the routes, with a certificate made for this
   * stack (scripts/localTls.ts; on loopback only: it names 127.0.0.1, ::1 and localhost).
   */
  tls?: boolean;
}

/**
 * Where a cluster's nodes are. On loopback (no `hosts`), node i (from 0) takes client port
 * `natsPort + i` and route port `clusterPort + i`, its JetStream in `nats/cluster/<name>`. With
 * `hosts` (one per node: containers), every node listens on `natsPort` and `clusterPort` at
 * `natsHost`, with its JetStream in `natsStoreDir`, and reaches the others by their host names.
 */
export interface ClusterLayout {
  nodes: number;
  clusterPort: number;
  hosts?: string[];
}

/** One node of the local NATS cluster. */
export interface NatsClusterNode {
  serverName: string;
  port: number;
  config: string;
}

/** Makes (first time) or reads `dir`, and writes the nats-server config for `natsPort`. */
export async function localSetup(natsPortOrOptions: number | SetupOptions): Promise<LocalSetup> {
  const o = typeof natsPortOrOptions === 'number' ? { natsPort: natsPortOrOptions } : natsPortOrOptions;
  const dir = o.dir ?? LOCAL_DIR;
  const NATS_DIR = join(dir, 'nats');
  await mkdir(NATS_DIR, { recursive: true, mode: 0o700 });
  // Private to its owner; 0711 (entered, never listed, by others) is kept: a stack run as root
  // opens it so to the postgres user (startPostgres), and a later start must not shut it out.
  if ((statSync(dir).mode & 0o777) !== 0o711) await chmod(dir, 0o700);
  const secretsFile = join(dir, 'secrets.env');
  let created = false;
  const secrets = existsSync(secretsFile) ? parseEnv(await readFile(secretsFile, 'utf8')) : {};
  // Only what is missing is made: a kept secret keeps the tokens and checkpoints made with it valid.
  const missing = SECRET_VARS.filter((k) => (secrets[k]?.length ?? 0) < 32);
  if (missing.length > 0) {
    for (const k of missing) secrets[k] = randomBytes(32).toString('base64url');
    const text = `# Generated by Toolbus (scripts/local.ts): this stack's secrets. Keep them private.\n${SECRET_VARS.map(
      (k) => `${k}=${secrets[k]}`,
    ).join('\n')}\n`;
    await writeFile(secretsFile, text, { mode: 0o600 });
    created = true;
  }
  if (o.postgresPasswordFile) {
    // docker-compose's POSTGRES_PASSWORD_FILE: read by the database's own user, inside a volume
    // only this stack's containers mount.
    await writeFile(join(dir, 'postgres-password'), secrets['PGPASSWORD']!, { mode: 0o644 });
  }
  const identities: Record<string, Identity> = {};
  const fresh: Identity[] = [];
  const workerTools = [...exampleTools, ...(await toolsFromConfiguration(process.env, 'worker'))].map(
    (t) => t.name,
  );
  const mcpNamespaces = await configuredMcpNamespaces();
  for (const [name, role] of localIdentities([...new Set(workerTools)], mcpNamespaces)) {
    if (existsSync(join(NATS_DIR, `${name}.nk`))) {
      identities[name] = await readIdentity(NATS_DIR, name, role);
    } else {
      identities[name] = createIdentity(name, role);
      fresh.push(identities[name]);
    }
  }
  if (fresh.length > 0) {
    await writeSeeds(NATS_DIR, fresh);
    created = true;
  }
  const natsConfig = join(NATS_DIR, 'nats.conf');
  const natsStoreDir = o.natsStoreDir ?? join(NATS_DIR, 'jetstream');
  if (o.tls && (o.cluster?.hosts || (o.natsHost && !['127.0.0.1', 'localhost'].includes(o.natsHost)))) {
    throw new Error('the generated TLS certificate is for loopback only (127.0.0.1, ::1, localhost)');
  }
  const natsTls = o.tls ? await localTls(NATS_DIR) : undefined;
  await writeFile(
    natsConfig,
    natsServerConfig({
      port: o.natsPort,
      ...(o.natsHost ? { host: o.natsHost } : {}),
      ...(o.natsMonitorPort ? { monitorPort: o.natsMonitorPort } : {}),
      storeDir: natsStoreDir,
      identities: Object.values(identities),
      ...(natsTls ? { tls: natsTls } : {}),
    }),
    { mode: 0o600 },
  );
  const natsCluster = o.cluster ? await writeClusterConfigs(NATS_DIR, o, o.cluster, identities, natsTls) : [];
  return {
    secrets: secrets,
    identities,
    seedFile: (name) => join(NATS_DIR, `${name}.nk`),
    natsConfig,
    natsStoreDir,
    natsCluster,
    natsTls,
    created,
    dir,
  };
}

/**
 * The nodes of a local JetStream cluster, each with its own JetStream directory and the same
 * authorization. The route password is generated once (`nats/route-password`): no client can join
 * as a node.
 */
async function writeClusterConfigs(
  natsDir: string,
  o: SetupOptions,
  cluster: ClusterLayout,
  identities: Record<string, Identity>,
  tls: LocalTls | undefined,
): Promise<NatsClusterNode[]> {
  const hosts = cluster.hosts;
  if (hosts && hosts.length !== cluster.nodes) throw new Error(`${cluster.nodes} nodes need as many hosts`);
  // A host goes into every node's route URLs, after the route password: only a host name or an
  // IPv4 address, so that nothing in it can move the password to another host (`a@b`) or leave
  // a route without one.
  const badHost = hosts?.find((h) => !/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(h));
  if (badHost !== undefined) throw new Error(`cluster host ${JSON.stringify(badHost)} is not a host name`);
  const clientPort = (i: number) => (hosts ? o.natsPort : o.natsPort + i);
  const routePort = (i: number) => (hosts ? cluster.clusterPort : cluster.clusterPort + i);
  const passwordFile = join(natsDir, 'route-password');
  const kept = existsSync(passwordFile) ? (await readFile(passwordFile, 'utf8')).trim() : '';
  // As for the secrets: an empty or short file (a start stopped while writing it) is made again,
  // never used: an empty route password would admit any route.
  const password = kept.length >= 32 ? kept : createClusterPassword();
  await writeFile(passwordFile, `${password}\n`, { mode: 0o600 });
  const nodes = Array.from({ length: cluster.nodes }, (_, i) => i);
  const routes = nodes.map((i) => `${hosts?.[i] ?? '127.0.0.1'}:${routePort(i)}`);
  return Promise.all(
    nodes.map(async (i) => {
      const serverName = `toolbus-${i + 1}`;
      const config = join(natsDir, `cluster-${i + 1}.conf`);
      const host = o.natsHost ?? '127.0.0.1';
      await writeFile(
        config,
        natsServerConfig({
          port: clientPort(i),
          host,
          ...(o.natsMonitorPort ? { monitorPort: o.natsMonitorPort + (hosts ? 0 : i) } : {}),
          storeDir: hosts && o.natsStoreDir ? o.natsStoreDir : join(natsDir, 'cluster', serverName),
          identities: Object.values(identities),
          ...(tls ? { tls } : {}),
          cluster: {
            serverName,
            name: 'toolbus',
            host,
            port: routePort(i),
            routes: routes.filter((_, j) => j !== i),
            password,
            ...(tls ? { tls } : {}),
          },
        }),
        { mode: 0o600 },
      );
      return { serverName, port: clientPort(i), config };
    }),
  );
}

/** The nats-server binary: NATS_SERVER_BIN, else on the PATH, else Debian's. */
export function natsServerBinary(): string {
  if (process.env['NATS_SERVER_BIN']) return process.env['NATS_SERVER_BIN'];
  for (const dir of (process.env['PATH'] ?? '').split(':')) {
    if (dir && existsSync(join(dir, 'nats-server'))) return join(dir, 'nats-server');
  }
  return '/usr/sbin/nats-server';
}

/**
 * Runs nats-server with the generated configuration (or one node's of the cluster), kept running
 * (localServer.ts); resolves once it accepts connections.
 * Refuses a port something else listens on (it would not be this server, nor this authorization).
 */
export async function startLocalNats(
  setup: LocalSetup,
  port: number,
  log: ServerLog,
  config = setup.natsConfig,
): Promise<LocalServer> {
  if (await accepts(port)) {
    throw portTaken(port, 'NATS', 'TOOLBUS_NATS_PORT');
  }
  const bin = natsServerBinary();
  if (!existsSync(bin)) {
    throw new Error(
      `nats-server not found (${bin}): install it (Debian: apt-get install nats-server) or set NATS_SERVER_BIN`,
    );
  }
  return startSupervised({
    what: 'nats-server',
    command: { command: bin, args: ['-c', config] },
    isUp: () => accepts(port),
    ...log,
  });
}

/**
 * The database of the stack's own PostgreSQL (startLocalPostgres): through its Unix socket in
 * `socketDir` (the file `.s.PGSQL.<port>` there), never TCP.
 */
export const localDatabaseUrl = (
  secrets: Record<string, string | undefined>,
  port: number,
  socketDir: string,
): string =>
  `postgres://postgres:${secrets['PGPASSWORD']}@localhost:${port}/toolbus?host=${encodeURIComponent(socketDir)}`;

/** Where the running stack's PostgreSQL has its socket directory written down (see startLocalPostgres). */
export const postgresSocketDirFile = (dir: string): string => join(dir, 'postgres', 'socket-dir');

/** A port the stack's own server needs is taken: what that most often means, and the ways out. */
const portTaken = (port: number, what: string, variable: string) =>
  new Error(
    `port ${port} is taken: the stack runs its own ${what} there. Is Toolbus already running ` +
      '(npm start in another terminal)? Stop it or what listens there, ' +
      `or set ${variable} to a free port (a second stack needs its own TOOLBUS_DIR and ports: README).`,
  );

/** Where a server of the stack says what it prints (`onLine`) and what happens to it (`onNotice`). */
export type ServerLog = Pick<ServerSpec, 'onLine' | 'onNotice'>;

/**
 * redis-server with the generated password, keeping nothing on disk (an accelerator), on a Unix
 * socket only (`redis-<port>.sock` in a new 0700 directory under /tmp with a random name, as the
 * PostgreSQL's): on a TCP port any local process could open connections without the password until
 * `maxclients` turned the services away. Its settings are in a file only this user reads
 * (`.toolbus/redis.conf`, 0600), not on its command line: /proc/<pid>/cmdline is readable by every
 * local user, and Redis rewrites its process title only after it has started. Resolves with the
 * server and its `unix://` URL.
 */
export async function startLocalRedis(
  setup: LocalSetup,
  port: number,
  log: ServerLog,
): Promise<{ server: LocalServer; url: string }> {
  const bin = process.env['REDIS_SERVER_BIN'] ?? 'redis-server';
  const socketDir = await mkdtemp('/tmp/toolbus-redis-');
  const socket = join(socketDir, `redis-${port}.sock`);
  const conf = join(setup.dir, 'redis.conf');
  await writeFile(
    conf,
    [
      'port 0',
      `unixsocket ${JSON.stringify(socket)}`,
      'unixsocketperm 700',
      `requirepass ${JSON.stringify(setup.secrets.REDIS_PASSWORD)}`,
      'save ""',
      'appendonly no',
      `dir ${JSON.stringify(setup.dir)}`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  await chmod(conf, 0o600); // a file left by an older Toolbus keeps its mode through writeFile
  const removeSocketDir = () => rm(socketDir, { recursive: true, force: true }).catch(() => undefined);
  const server = await startSupervised({
    what: 'Redis',
    command: { command: bin, args: [conf] },
    // Connected to, not only there: a socket file outlives a killed server.
    isUp: () => accepts(socket),
    cleanup: removeSocketDir,
    ...log,
  }).catch(async (e: unknown) => {
    await removeSocketDir();
    throw e;
  });
  return { server, url: localRedisUrl(setup.secrets, socket) };
}

/** Whether the PostgreSQL server at `url` answers a query (false while it starts or recovers). */
async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The stack's own Redis (startLocalRedis) through its socket. */
export const localRedisUrl = (secrets: Record<string, string | undefined>, socket: string): string =>
  `unix://${socket}?password=${encodeURIComponent(secrets['REDIS_PASSWORD'] ?? '')}`;

/** The system user the stack's PostgreSQL runs as when the stack runs as root. */
export const SERVER_USER = 'toolbus';

/**
 * The ids of `SERVER_USER`, made (a system user, no home, no shell) when missing. Its own user,
 * not `postgres`: whoever becomes `postgres` through another PostgreSQL on the machine (one that
 * trusts local connections makes any local user its superuser, and a superuser runs programs as
 * `postgres`) would otherwise own the stack's data and its socket.
 */
function serverUser(): { uid: number; gid: number } {
  const quiet = { stdio: ['ignore', 'pipe', 'ignore'] as ['ignore', 'pipe', 'ignore'] };
  const ids = () => ({
    uid: Number(execFileSync('id', ['-u', SERVER_USER], quiet).toString().trim()),
    gid: Number(execFileSync('id', ['-g', SERVER_USER], quiet).toString().trim()),
  });
  try {
    return ids();
  } catch {
    // Its group may exist without it (useradd --user-group then refuses), and another start may
    // make it meanwhile: whatever useradd says, the user is looked up again.
    const group = (() => {
      try {
        execFileSync('getent', ['group', SERVER_USER], { stdio: 'ignore' });
        return ['--gid', SERVER_USER];
      } catch {
        return ['--user-group'];
      }
    })();
    let refused = '';
    try {
      execFileSync(
        'useradd',
        [
          '--system',
          ...group,
          '--no-create-home',
          '--home-dir',
          '/nonexistent',
          '--shell',
          '/usr/sbin/nologin',
          SERVER_USER,
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
    } catch (e) {
      refused = String((e as { stderr?: Buffer }).stderr ?? (e as Error).message).trim();
    }
    try {
      return ids();
    } catch {
      throw new Error(
        `cannot make the system user ${SERVER_USER} that the stack's PostgreSQL runs as under root${refused ? ` (useradd: ${refused})` : ''}: make it (useradd --system ${SERVER_USER}), or run npm start as another user`,
      );
    }
  }
}

/**
 * A PostgreSQL cluster of the stack's own in `.toolbus/postgres` (initdb once), on loopback, with
 * password (SCRAM) authentication for the generated PGPASSWORD; the event store and the read models
 * live in its database `toolbus`. As root, it runs as the system user `toolbus` (PostgreSQL refuses
 * root; `serverUser`).
 */
export async function startLocalPostgres(
  setup: LocalSetup,
  port: number,
  log: ServerLog,
): Promise<{ server: LocalServer; url: string }> {
  const versions = existsSync('/usr/lib/postgresql') ? readdirSync('/usr/lib/postgresql').sort() : [];
  const version = versions.at(-1);
  if (!version)
    throw new Error('PostgreSQL is not installed (Debian: apt-get install postgresql), or set DATABASE_URL');
  const bin = (name: string) => `/usr/lib/postgresql/${version}/bin/${name}`;
  const ids = process.getuid?.() === 0 ? serverUser() : null;
  const as = (command: string, args: string[]) =>
    ids
      ? {
          command: 'setpriv',
          args: [`--reuid=${ids.uid}`, `--regid=${ids.gid}`, '--clear-groups', '--', command, ...args],
        }
      : { command, args };
  const home = join(setup.dir, 'postgres');
  const data = join(home, 'data');
  // The postgres user must reach its folder: .toolbus is entered, never listed, by others. At
  // every start, not only the first: a folder made private again (by hand, by an older Toolbus)
  // would otherwise stop PostgreSQL with "Permission denied" on its own data.
  if (ids) await chmod(setup.dir, 0o711);
  // A cluster made by an older Toolbus, which ran it as `postgres`: handed to the stack's own user.
  if (ids && existsSync(home) && statSync(home).uid !== ids.uid) {
    execFileSync('chown', ['-R', `${ids.uid}:${ids.gid}`, home]);
  }
  if (!existsSync(join(data, 'PG_VERSION'))) {
    await mkdir(home, { recursive: true, mode: 0o700 });
    const pwfile = join(home, 'initdb-password');
    await writeFile(pwfile, `${setup.secrets.PGPASSWORD}\n`, { mode: 0o600 });
    if (ids) {
      chownSync(home, ids.uid, ids.gid);
      chownSync(pwfile, ids.uid, ids.gid);
    }
    const init = as(bin('initdb'), [
      '-D',
      data,
      '-U',
      'postgres',
      '--pwfile',
      pwfile,
      '--auth-host=scram-sha-256',
      '--auth-local=scram-sha-256',
      '-E',
      'UTF8',
      '--no-sync',
    ]);
    execFileSync(init.command, init.args, { stdio: 'ignore' });
    await rm(pwfile, { force: true });
  }
  // A Unix socket only, no TCP: a TCP port lets any local process hold connections at the password
  // prompt (a minute each) until max_connections is reached and the services are turned away. The
  // socket is in a new directory of its own, 0700 (only the server's user, and root, may connect),
  // under /tmp with a random name (short: a socket's path has at most 107 bytes, too few under a
  // deep checkout; random: nobody can make it first). Written down for `npm run audit`.
  const socketDir = await mkdtemp('/tmp/toolbus-pg-');
  if (ids) chownSync(socketDir, ids.uid, ids.gid);
  await writeFile(postgresSocketDirFile(setup.dir), `${socketDir}\n`, { mode: 0o600 });
  const socketFile = join(socketDir, `.s.PGSQL.${port}`);
  const removeSocketDir = () => rm(socketDir, { recursive: true, force: true }).catch(() => undefined);
  const admin = localDatabaseUrl(setup.secrets, port, socketDir).replace('/toolbus?', '/postgres?');
  const server = await startSupervised({
    what: 'PostgreSQL',
    command: as(bin('postgres'), [
      '-D',
      data,
      '-p',
      String(port),
      '-c',
      `unix_socket_directories=${socketDir}`,
      '-c',
      'unix_socket_permissions=0700',
      '-c',
      'listen_addresses=',
      '-c',
      'synchronous_commit=on',
      '-c',
      'max_connections=200',
    ]),
    // Answering a query, not only there: a socket file outlives a killed server, and after a crash
    // the server accepts connections long before it answers (its recovery: 20 s and more).
    isUp: async () => (await accepts(socketFile)) && (await answers(admin)),
    cleanup: removeSocketDir,
    ...log,
  }).catch(async (e: unknown) => {
    await removeSocketDir();
    throw e;
  });
  for (let i = 0; ; i++) {
    const client = new pg.Client({ connectionString: admin });
    try {
      await client.connect();
      const { rows } = await client.query(`select 1 from pg_database where datname = 'toolbus'`);
      if (rows.length === 0) await client.query('create database toolbus');
      break;
    } catch (e) {
      if (i > 300) {
        // Not handed to the caller, so not stopped by it: stopped here.
        await server.stop();
        throw new Error(`PostgreSQL did not accept the stack's password: ${(e as Error).message}`, {
          cause: e,
        });
      }
      await new Promise((r) => setTimeout(r, 100));
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  return { server, url: localDatabaseUrl(setup.secrets, port, socketDir) };
}
