/**
 * `npm start`: runs the Toolbus stack on this machine, one process per service, with readable
 * logs: its own nats-server with a generated authorization (every part, and the demo agent, with
 * its own nkey), against the local PostgreSQL (also the event store unless KURRENTDB_URL is set)
 * and Redis. Secrets and keys are generated once into .toolbus/ (scripts/local.ts). With NATS_URL
 * set, that NATS is used instead, with the NATS_* credentials of the environment for every part.
 * Ctrl-C stops everything cleanly.
 *
 * `npm run start:cluster` (`--cluster`): the clustered topology of docs/scaling.md on loopback:
 * three nats-server nodes in one JetStream cluster with the request stream on three replicas, and
 * a second dispatcher, projector (standing by) and notifier beside the first ones.
 */
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { relative, sep } from 'node:path';
import { z } from 'zod';
import { executionIdFor } from '../contracts/index.ts';
import { CommonEnv, ConfigError, loadConfig } from '../lib/config.ts';
import { signToken } from '../lib/auth.ts';
import { natsUrlForLog } from '../lib/nats.ts';
import { launchStack, prettyLine, type ServiceName, type Stack } from './launcher.ts';
import { localSetup, startLocalNats, startLocalPostgres, startLocalRedis, type ServerLog } from './local.ts';
import type { LocalServer } from './localServer.ts';

const ALL: ServiceName[] = ['dispatcher', 'projector', 'notifier', 'auditor', 'gateway', 'console'];
/** The services that run twice in the clustered topology; the second instance's port is the first's + 10. */
const DOUBLED: ServiceName[] = ['dispatcher', 'projector', 'notifier'];
const SECOND_PORT_OFFSET = 10;
const CLUSTER_NODES = 3;
/** nats-server's lines worth showing: errors, fatal errors, warnings. */
// Not a handshake ended by EOF: the start's own check that the port accepts connections.
const NATS_IMPORTANT = /\[(ERR|FTL|WRN)\](?!.*TLS handshake error: EOF)/;

const StackEnv = CommonEnv.pick({
  LOG_LEVEL: true,
  KURRENTDB_URL: true,
  DISPATCHER_PORT: true,
  PROJECTOR_PORT: true,
  NOTIFIER_PORT: true,
}).extend({
  AUDITOR_PORT: CommonEnv.shape.DISPATCHER_PORT.default(8083),
  GATEWAY_PORT: CommonEnv.shape.DISPATCHER_PORT.default(8084),
  /** The operator console (services/console). */
  CONSOLE_PORT: CommonEnv.shape.DISPATCHER_PORT.default(8085),
  /** An existing NATS, PostgreSQL, Redis to use instead of the stack's own. */
  NATS_URL: z.string().optional(),
  DATABASE_URL: CommonEnv.shape.DATABASE_URL.unwrap().optional(),
  REDIS_URL: CommonEnv.shape.REDIS_URL.unwrap().optional(),
  /** Where the stack's own servers listen. */
  TOOLBUS_NATS_PORT: CommonEnv.shape.DISPATCHER_PORT.default(4223),
  /** The clustered topology's route ports (first node; the others follow). */
  TOOLBUS_NATS_CLUSTER_PORT: CommonEnv.shape.DISPATCHER_PORT.default(6223),
  TOOLBUS_POSTGRES_PORT: CommonEnv.shape.DISPATCHER_PORT.default(5433),
  TOOLBUS_REDIS_PORT: CommonEnv.shape.DISPATCHER_PORT.default(6380),
  /**
   * How long a service may take to become ready (ms). A service that stops before is reported at
   * once, with its own reason; a slow, loaded machine only needs patience.
   */
  TOOLBUS_START_TIMEOUT_MS: z.coerce.number().int().min(1_000).max(3_600_000).default(180_000),
});

async function main() {
  let config;
  try {
    config = loadConfig(StackEnv);
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(e.message);
      process.exit(2);
    }
    throw e;
  }
  const clustered = process.argv.includes('--cluster');
  const natsPort = config.TOOLBUS_NATS_PORT;
  const ownNats = config.NATS_URL === undefined;
  const setup = await localSetup({
    natsPort,
    // Its own NATS proves itself to every client (scripts/localTls.ts): no process that takes the
    // port while nats-server is down can pass for it.
    tls: ownNats,
    ...(clustered
      ? { cluster: { nodes: CLUSTER_NODES, clusterPort: config.TOOLBUS_NATS_CLUSTER_PORT } }
      : {}),
  });
  if (setup.created)
    console.log(`made new secrets and NATS identities in ${shownPath(setup.dir)}/ (kept for the next start)`);
  // The stack's own servers, each with the generated credentials, unless told to use others.
  // Kept running: one that exits is started again (scripts/localServer.ts), as the services are.
  const servers: LocalServer[] = [];
  const stopServers = async () => {
    for (const server of servers.reverse()) await server.stop();
  };
  /** What a server prints that matters (`important`), and what happens to it, under its name. */
  const serverLog = (name: string, important: RegExp): ServerLog => ({
    onLine: (line) => {
      if (important.test(line)) console.log(`${name.padEnd(10)} ${line}`);
    },
    onNotice: (line) => console.log(`${name.padEnd(10)} ${line}`),
  });
  const natsUrl =
    config.NATS_URL ??
    (clustered
      ? setup.natsCluster.map((node) => `nats://127.0.0.1:${node.port}`).join(',')
      : `nats://127.0.0.1:${natsPort}`);
  let databaseUrl = config.DATABASE_URL;
  let redisUrl = config.REDIS_URL;
  try {
    if (ownNats && clustered) {
      // Every node at once: a node's JetStream waits for a quorum of the others.
      const nodes = await Promise.allSettled(
        setup.natsCluster.map((node) =>
          startLocalNats(setup, node.port, serverLog(node.serverName, NATS_IMPORTANT), node.config),
        ),
      );
      // The nodes that started are stopped with the rest when another did not.
      for (const node of nodes) if (node.status === 'fulfilled') servers.push(node.value);
      const failed = nodes.find((node) => node.status === 'rejected');
      if (failed) throw failed.reason;
    } else if (ownNats) {
      servers.push(await startLocalNats(setup, natsPort, serverLog('nats', NATS_IMPORTANT)));
    }
    if (databaseUrl === undefined) {
      const postgres = await startLocalPostgres(
        setup,
        config.TOOLBUS_POSTGRES_PORT,
        // Not "the database system is starting up": the start's own readiness checks, refused
        // until it is up, as they should be.
        serverLog('postgres', /\b(ERROR|FATAL|PANIC)\b(?!.*the database system is starting up)/),
      );
      servers.push(postgres.server);
      databaseUrl = postgres.url;
    }
    if (redisUrl === undefined) {
      const redis = await startLocalRedis(
        setup,
        config.TOOLBUS_REDIS_PORT,
        serverLog('redis', /# (WARNING|Failed)(?!.*overcommit)/),
      );
      servers.push(redis.server);
      redisUrl = redis.url;
    }
  } catch (e) {
    await stopServers();
    throw e;
  }
  // A secret given in the environment wins over the generated one.
  const secrets = Object.fromEntries(
    Object.entries(setup.secrets).map(([k, v]) => [k, process.env[k] || v]),
  ) as typeof setup.secrets;
  const seedEnv = (name: string): Record<string, string> =>
    ownNats
      ? {
          NATS_NKEY_SEED_FILE: setup.seedFile(name),
          ...(setup.natsTls ? { NATS_TLS_CA: setup.natsTls.caFile } : {}),
        }
      : {};
  const services = ALL.filter((name) => existsSync(new URL(`../services/${name}/main.ts`, import.meta.url)));
  console.log(
    `starting ${services.join(', ')}${clustered ? ` and a second ${DOUBLED.join(', ')}` : ''} (event store: ${
      config.KURRENTDB_URL ? 'KurrentDB' : 'PostgreSQL'
    })`,
  );
  const env: Record<string, string> = {
    NATS_URL: natsUrl,
    DATABASE_URL: databaseUrl,
    REDIS_URL: redisUrl,
    ...secrets,
    // A request is acknowledged once a quorum of the nodes stored it (docs/reliability.md). On a
    // NATS of the user's own, its NATS_STREAM_REPLICAS (if any) decides: it may have one node.
    ...(clustered && ownNats ? { NATS_STREAM_REPLICAS: String(CLUSTER_NODES) } : {}),
  };
  // The dispatcher's GET /executions (no lists there) names where the lists are: this projector.
  const dispatcherEnv = {
    ...seedEnv('dispatcher'),
    DISPATCHER_PROJECTOR_URL: `http://127.0.0.1:${config.PROJECTOR_PORT}`,
  };
  let stack: Stack | undefined;
  const seconds: Stack[] = [];
  try {
    stack = await launchStack({
      services,
      env,
      restart: true,
      serviceEnv: {
        dispatcher: dispatcherEnv,
        notifier: seedEnv('notifier'),
        // The MCP gateway: its own NATS identity, and the dispatcher whose GET /tools it reads.
        gateway: {
          ...seedEnv('gateway'),
          GATEWAY_DISPATCHER_URL: `http://127.0.0.1:${config.DISPATCHER_PORT}`,
        },
      },
      ports: {
        dispatcher: config.DISPATCHER_PORT,
        projector: config.PROJECTOR_PORT,
        notifier: config.NOTIFIER_PORT,
        auditor: config.AUDITOR_PORT,
        gateway: config.GATEWAY_PORT,
        console: config.CONSOLE_PORT,
      },
      onLog: (line) => console.log(prettyLine(line)),
      readyTimeoutMs: config.TOOLBUS_START_TIMEOUT_MS,
    });
    if (clustered) {
      // The second instances, after the first: the second projector finds the lock taken and stands by.
      const ports = Object.fromEntries(
        DOUBLED.map((name) => [name, stack!.services[name].port + SECOND_PORT_OFFSET]),
      );
      seconds.push(
        await launchStack({
          services: DOUBLED,
          env,
          restart: true,
          serviceEnv: { dispatcher: dispatcherEnv, notifier: seedEnv('notifier') },
          ports,
          onLog: (line) => console.log(prettyLine({ ...line, service: `${line.service}-2` })),
          readyTimeoutMs: config.TOOLBUS_START_TIMEOUT_MS,
        }),
      );
    }
  } catch (e) {
    await stack?.stop();
    await stopServers();
    throw e;
  }

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    // A terminal's Ctrl-C reaches the servers too: from now on their exits are no crash.
    for (const server of servers) server.hold();
    console.log(`\n${signal}: stopping ${services.join(', ')}...`);
    await Promise.all([stack.stop(), ...seconds.map((s) => s.stop())]);
    await stopServers();
    console.log('stopped.');
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));

  const demoToken = await signToken(secrets.JWT_SECRET, { sub: 'demo', roles: ['user'] }, '12h');
  const lines = [
    '',
    'Toolbus is running:',
    ...services.map(
      (name) =>
        `  ${name.padEnd(10)} ${stack.services[name].url}  (health: /health/ready, metrics: /metrics)`,
    ),
    ...seconds.flatMap((second) =>
      DOUBLED.map((name) => `  ${`${name}-2`.padEnd(10)} ${second.services[name].url}`),
    ),
  ];
  if (services.includes('notifier')) {
    lines.push('', `Live page for user "demo": ${stack.services.notifier.url}/#token=${demoToken}`);
  }
  if (services.includes('console')) {
    lines.push(
      '',
      `Operator console: ${stack.services.console.url}/#token=<an operator token>`,
      '  make one with: npm run -s token -- <your name> operator,approver,auditor   (docs/console.md)',
    );
  }
  if (services.includes('dispatcher')) {
    lines.push(
      '',
      'Run a tool as "demo":',
      `  curl -s -X POST ${stack.services.dispatcher.url}/executions -H 'content-type: application/json' \\`,
      `    -H 'authorization: Bearer ${demoToken}' \\`,
      `    -d '{"tool":"dataset_stats","args":{"columns":{"latency":[12,15,11,40,13]}}}'`,
      ...demoRuns(stack.services.dispatcher.url, demoToken),
    );
  }
  if (services.includes('gateway')) {
    lines.push(
      '',
      `MCP clients (Streamable HTTP, docs/mcp.md) at ${stack.services.gateway.url}/mcp; as "demo", with the SDK's client:`,
      `  MCP_URL=${stack.services.gateway.url}/mcp TOOLBUS_TOKEN=${demoToken} \\`,
      `    npx tsx scripts/mcp.ts call dataset_stats '{"columns":{"latency":[12,15,11,40,13]}}'`,
      'or with curl (one stateless JSON-RPC request):',
      `  curl -s ${stack.services.gateway.url}/mcp -H 'content-type: application/json' \\`,
      `    -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2025-11-25' \\`,
      `    -H 'authorization: Bearer ${demoToken}' \\`,
      `    -d '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"dataset_stats","arguments":{"columns":{"latency":[12,15,11,40,13]}}}}'`,
    );
  }
  lines.push(
    '',
    ownNats
      ? `NATS (JetStream${clustered ? `, ${CLUSTER_NODES} nodes, requests on ${CLUSTER_NODES} replicas` : ''}, TLS and authorization required): ${natsUrl}. An agent connects as the "agent" identity, trusting the stack's CA:`
      : `NATS: ${natsUrlForLog(natsUrl)}`,
    ...(ownNats
      ? [
          `  NATS_URL=${natsUrl} NATS_NKEY_SEED_FILE=${setup.seedFile('agent')}${setup.natsTls ? ` NATS_TLS_CA=${setup.natsTls.caFile}` : ''}`,
          setup.natsTls
            ? `  connectNats(NATS_URL, 'my-agent', { nkeySeed: <that file's text>, tls: { caFile: NATS_TLS_CA } }) then createAgentClient(nc),`
            : `  connectNats(NATS_URL, 'my-agent', { nkeySeed: <that file's text> }) then createAgentClient(nc),`,
          `  both from @toolbus/client (packages/client, built by npm run build:packages; docs/security.md)`,
          `Existing MCP servers (toolbus.json's mcpServers) as tools: npm run mcp-tools (docs/tools.md)`,
        ]
      : []),
    '',
    'Ctrl-C stops everything.',
    '',
  );
  console.log(lines.join('\n'));
}

/**
 * Progress and cancellation, to watch on the live page: a countdown, and a wait cancelled from a
 * second terminal. The request id is fresh per start, so the execution id to cancel is known in
 * advance (it is derived from the user and the request id) and a second start runs anew.
 */
function demoRuns(url: string, token: string): string[] {
  const requestId = `try-cancel-${randomUUID()}`;
  const post = `curl -s -X POST ${url}/executions -H 'content-type: application/json' -H 'authorization: Bearer ${token}'`;
  return [
    '',
    'Progress (watch it on the live page): a 20 s countdown',
    `  ${post} \\`,
    `    -d '{"tool":"countdown","args":{"seconds":20}}'`,
    'Cancellation: start a long wait, then cancel it from another terminal (once: pasted again, its request id gets the same answer at once, as any retry does)',
    `  ${post} \\`,
    `    -d '{"requestId":"${requestId}","tool":"wait_for_cancel","args":{}}'`,
    `  curl -s -X POST ${url}/executions/${executionIdFor('demo', requestId)}/cancel -H 'authorization: Bearer ${token}'`,
  ];
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});

/** A directory as the user would type it here: relative inside the working directory, else absolute. */
function shownPath(dir: string): string {
  return dir.startsWith(process.cwd() + sep) ? relative(process.cwd(), dir) : dir;
}
