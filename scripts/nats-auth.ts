/**
 * Toolbus's NATS identities and what the server lets each of them do. One table of permissions
 * (`permissionsOf`), used to write the nats-server authorization that `npm start` and the tests
 * run (`writeNatsServerConfig`), and printed for operators who run their own NATS
 * (`npm run nats:permissions`, docs/security.md).
 *
 * Every identity is an nkey (an Ed25519 key pair). Its public key is its id: the server knows it
 * by that key, its inbox is `_INBOX.<id>`, and an agent's requests carry it as the last subject
 * token, so that the server ties all three to the key and the dispatcher answers only there.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createUser, fromSeed } from '@nats-io/nkeys';
import { assertToolNamespace, inboxPrefixOf, jetstream, subjects } from '../contracts/index.ts';

export type Role =
  | { kind: 'dispatcher' }
  | { kind: 'notifier' }
  /** Publishes tool requests, cancels and answer lookups; reads only its own inbox. */
  | { kind: 'agent' }
  /**
   * Serves and announces exactly `tools` (tool names), and every tool of each of `namespaces`
   * (`<namespace>.<name>`, whatever the name: the MCP tool provider learns its names at run time).
   */
  | { kind: 'worker'; tools: string[]; namespaces?: string[] };

export interface Identity {
  /** A readable name (files, logs, the generated config's comments). */
  name: string;
  role: Role;
  /** The nkey seed (secret): `SU...`. */
  seed: string;
  /** The public key (`U...`): the identity's id on the bus. */
  publicKey: string;
}

export interface Permissions {
  publish: { allow?: string[]; deny?: string[] };
  subscribe: { allow?: string[]; deny?: string[] };
  /** May answer requests it received (to their reply subject only). */
  allow_responses?: boolean;
}

const STREAM = jetstream.requestsStream;

/** What each role may publish and subscribe to; everything else the server refuses. */
export function permissionsOf(role: Role, id: string): Permissions {
  const inbox = `${inboxPrefixOf(id)}.>`;
  switch (role.kind) {
    case 'agent':
      return {
        publish: {
          allow: [`toolbus.requests.*.${id}`, `toolbus.cancel.*.${id}`, `toolbus.answers.*.${id}`],
        },
        subscribe: { allow: [inbox] },
      };
    case 'dispatcher':
      return {
        publish: {
          allow: [
            // its own HTTP API is an agent too
            `toolbus.requests.*.${id}`,
            `toolbus.answers.*.${id}`,
            `toolbus.cancel.*.${id}`,
            // answers, to the inbox a request names (checked against the request's agent)
            '_INBOX.>',
            subjects.eventsAll,
            subjects.progressAll,
            'toolbus.dispatchers.>',
            'toolbus.tools.run.>',
            subjects.toolCancelAll,
            subjects.toolRefusedAll,
            subjects.toolDiscover,
            // the JetStream API of its own stream and consumer, and nothing else's
            '$JS.API.INFO',
            `$JS.API.STREAM.*.${STREAM}`,
            `$JS.API.CONSUMER.*.${STREAM}`,
            `$JS.API.CONSUMER.*.${STREAM}.>`,
            `$JS.API.CONSUMER.*.*.${STREAM}.>`,
            `$JS.ACK.${STREAM}.>`,
          ],
        },
        subscribe: {
          allow: [
            inbox,
            subjects.answersAll,
            subjects.cancelAll,
            'toolbus.dispatchers.>',
            subjects.toolAnnounceAll,
            'toolbus.tools.progress.>',
          ],
        },
        // No `allow_responses`: every reply of the dispatcher (answers, lookups, cancels, JetStream
        // acks) goes to a subject allowed above. With it, nats-server 2.9 remembers each reply
        // subject delivered to the dispatcher (every pulled request's ack subject, every lookup)
        // for two minutes, and once it holds more than 4,096 scans them all at each delivery: an
        // overload made nats-server spend its core there and the intake stall (docs/reliability.md).
      };
    case 'notifier':
      return {
        publish: { deny: ['>'] },
        subscribe: { allow: [inbox, subjects.eventsAll, subjects.progressAll] },
      };
    case 'worker': {
      // A tool's subjects end in exactly its name's tokens (one, or two for a namespaced name) and
      // then the version or invocation token, so each grant below counts tokens with `*` and never
      // uses `>`: the worker of tool `web` may not reach the tools of namespace `web`, nor back.
      const namespaces = (role.namespaces ?? []).map(assertToolNamespace);
      return {
        publish: {
          allow: [
            ...role.tools.flatMap((t) => [subjects.toolAnnounce(t), `toolbus.tools.progress.${t}.*`]),
            ...namespaces.flatMap((ns) => [
              `toolbus.tools.announce.${ns}.*`,
              `toolbus.tools.progress.${ns}.*.*`,
            ]),
          ],
        },
        subscribe: {
          allow: [
            inbox,
            subjects.toolDiscover,
            ...role.tools.flatMap((t) => [
              `toolbus.tools.run.${t}.*`,
              subjects.toolCancel(t),
              subjects.toolRefused(t),
            ]),
            ...namespaces.flatMap((ns) => [
              `toolbus.tools.run.${ns}.*.*`,
              `toolbus.tools.cancel.${ns}.*`,
              `toolbus.tools.refused.${ns}.*`,
            ]),
          ],
        },
        allow_responses: true,
      };
    }
  }
}

export function createIdentity(name: string, role: Role): Identity {
  const kp = createUser();
  return { name, role, seed: new TextDecoder().decode(kp.getSeed()), publicKey: kp.getPublicKey() };
}

/**
 * How one node of a NATS cluster finds and admits the others. JetStream in a cluster needs a
 * server name of its own on every node and the same cluster name on all of them.
 */
export interface NatsClusterSettings {
  /** This node's name, unique in the cluster: JetStream names stream leaders and replicas by it. */
  serverName: string;
  /** The cluster's name, the same on every node. */
  name: string;
  /** Where this node listens for routes from the other nodes. */
  port: number;
  host?: string;
  /** The other nodes' route addresses (`host:port`); listing this node's own is harmless. */
  routes: string[];
  /**
   * The route password every node shares (`createClusterPassword`): a route is admitted only
   * with it, so no client on the network can join as a node.
   */
  password: string;
  /** The route user name (default `route`). */
  user?: string;
  /** TLS on the routes too: each node proves itself to the others with the server certificate. */
  tls?: NatsServerTls;
  /**
   * The address the other nodes are told to reach this one at (`host:port`), when it is not the
   * listen address (a proxy, a NAT). Nodes also connect to addresses they hear of from each other.
   */
  advertise?: string;
  /**
   * Whether clients are told the other nodes' client addresses (default true): a client then
   * fails over to nodes it was not given. False keeps clients on the list they were given.
   */
  advertiseToClients?: boolean;
}

/** A fresh route password for a cluster's nodes (random, 32 bytes, never a well-known default). */
export const createClusterPassword = (): string => randomBytes(32).toString('base64url');

/** The server's certificate and key, and the CA its peers are checked against (scripts/localTls.ts). */
export interface NatsServerTls {
  certFile: string;
  keyFile: string;
  caFile: string;
}

/**
 * A `tls` block. The handshake may take 5 s (nats-server's default, half a second, fails clients
 * on a busy machine).
 */
const tlsBlock = (tls: NatsServerTls, indent: string, withCa: boolean): string[] => [
  `${indent}tls {`,
  `${indent}  cert_file: ${JSON.stringify(tls.certFile)}`,
  `${indent}  key_file: ${JSON.stringify(tls.keyFile)}`,
  ...(withCa ? [`${indent}  ca_file: ${JSON.stringify(tls.caFile)}`] : []),
  `${indent}  timeout: 5`,
  `${indent}}`,
];

function clusterBlock(c: NatsClusterSettings): string[] {
  const user = c.user ?? 'route';
  const credentials = `${encodeURIComponent(user)}:${encodeURIComponent(c.password)}`;
  return [
    `server_name: ${JSON.stringify(c.serverName)}`,
    'cluster {',
    `  name: ${JSON.stringify(c.name)}`,
    `  host: ${JSON.stringify(c.host ?? '127.0.0.1')}`,
    `  port: ${c.port}`,
    ...(c.advertise ? [`  advertise: ${JSON.stringify(c.advertise)}`] : []),
    ...(c.advertiseToClients === false ? ['  no_advertise: true'] : []),
    '  # Routes are admitted only with this user and password (generated for this cluster).',
    `  authorization { user: ${JSON.stringify(user)}, password: ${JSON.stringify(c.password)} }`,
    `  routes: [${c.routes.map((r) => JSON.stringify(`nats-route://${credentials}@${r}`)).join(', ')}]`,
    ...(c.tls ? tlsBlock(c.tls, '  ', true) : []),
    '}',
  ];
}

/**
 * The nats-server configuration text: listen address, JetStream, and one user per identity; with
 * `cluster`, this node's name and its routes to the other nodes of a JetStream cluster.
 */
export function natsServerConfig(o: {
  port: number;
  host?: string;
  /** The monitoring port (`/healthz`), when a health check needs it. */
  monitorPort?: number;
  storeDir: string;
  identities: Identity[];
  cluster?: NatsClusterSettings;
  /** TLS required of every client: they check the server's certificate against `caFile`. */
  tls?: NatsServerTls;
}): string {
  const users = o.identities.map(
    (i) =>
      `    # ${i.name} (${i.role.kind}${i.role.kind === 'worker' ? `: ${[...i.role.tools, ...(i.role.namespaces ?? []).map((ns) => `${ns}.*`)].join(', ')}` : ''})\n` +
      `    ${JSON.stringify({ nkey: i.publicKey, permissions: permissionsOf(i.role, i.publicKey) })}`,
  );
  return [
    '# Generated by Toolbus (scripts/nats-auth.ts). Every client needs one of these nkeys;',
    '# each may use only the subjects listed with it.',
    `host: ${JSON.stringify(o.host ?? '127.0.0.1')}`,
    `port: ${o.port}`,
    ...(o.monitorPort ? [`http_port: ${o.monitorPort}`] : []),
    `jetstream { store_dir: ${JSON.stringify(o.storeDir)} }`,
    ...(o.tls
      ? [
          "# Clients must use TLS: the server proves it is this stack's (scripts/localTls.ts).",
          ...tlsBlock(o.tls, '', false),
        ]
      : []),
    ...(o.cluster ? clusterBlock(o.cluster) : []),
    'authorization {',
    '  users: [',
    users.join(',\n'),
    '  ]',
    '}',
    '',
  ].join('\n');
}

/** Writes `<dir>/<name>.nk` (the seed, readable by its owner only) for each identity. */
export async function writeSeeds(dir: string, identities: Identity[]): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const i of identities) {
    const file = join(dir, `${i.name}.nk`);
    await writeFile(file, `${i.seed}\n`, { mode: 0o600 });
    await chmod(file, 0o600);
  }
}

/** Reads identities back from their seed files (made by `writeSeeds`). */
export async function readIdentity(dir: string, name: string, role: Role): Promise<Identity> {
  const seed = (await readFile(join(dir, `${name}.nk`), 'utf8')).trim();
  const publicKey = fromSeed(new TextEncoder().encode(seed)).getPublicKey();
  return { name, role, seed, publicKey };
}

/** The environment that makes a Toolbus process connect as `identity`. */
export const natsEnvOf = (identity: Identity): Record<string, string> => ({
  NATS_NKEY_SEED: identity.seed,
});

/** The permission table as Markdown, for docs/security.md and `npm run nats:permissions`. */
export function permissionTable(): string {
  const id = '<id>';
  const rows: [string, Role][] = [
    ['dispatcher', { kind: 'dispatcher' }],
    ['notifier', { kind: 'notifier' }],
    ['agent (also the MCP gateway)', { kind: 'agent' }],
    ['tool worker of tool `<tool>`', { kind: 'worker', tools: ['tname'] }],
    [
      'tool worker of namespace `<ns>` (the MCP tool provider)',
      { kind: 'worker', tools: [], namespaces: ['nsname'] },
    ],
  ];
  const list = (xs: string[] | undefined) => (xs?.length ? xs.map((x) => `\`${x}\``).join(', ') : '');
  const lines = ['| identity | may publish | may subscribe |', '| --- | --- | --- |'];
  for (const [label, role] of rows) {
    const p = permissionsOf(role, 'ID');
    const fix = (xs: string[] | undefined) =>
      xs?.map((x) => x.replaceAll('ID', id).replaceAll('tname', '<tool>').replaceAll('nsname', '<ns>'));
    const pub =
      (p.publish.deny?.includes('>') ? 'nothing' : list(fix(p.publish.allow))) +
      (p.allow_responses ? '; replies to requests it received' : '');
    lines.push(`| ${label} | ${pub} | ${list(fix(p.subscribe.allow))} |`);
  }
  return lines.join('\n');
}
