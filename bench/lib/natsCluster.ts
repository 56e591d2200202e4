import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { jetstream as jetstreamNames } from '../../contracts/index.ts';
import { connectNats, type NatsConnection } from '../../lib/nats.ts';
import {
  createClusterPassword,
  createIdentity,
  natsEnvOf,
  natsServerConfig,
  type Identity,
} from '../../scripts/nats-auth.ts';
import { freePort, waitForPort } from '../../test/support/ports.ts';

/**
 * A 3-node JetStream cluster for benchmark 2c, as `startSecuredNatsCluster` (test/support) makes
 * one (Toolbus's generated authorization, one store per node, route passwords) but with the nodes'
 * routes and clients connected directly: the test helper puts a TCP proxy of its process on every
 * connection so that a node can be partitioned, and in a benchmark those proxies are a hop and CPU
 * of the runner's on every message, which a deployment does not have.
 */
export interface BenchNatsNode {
  name: string;
  pid(): number | undefined;
  kill(): Promise<void>;
}

export interface BenchNatsCluster {
  url: string;
  nodes: BenchNatsNode[];
  identities: { dispatcher: Identity; agent: Identity };
  serviceEnv: { dispatcher: Record<string, string> };
  /** The node leading the intake stream now, as JetStream says; undefined during an election. */
  streamLeader(): Promise<BenchNatsNode | undefined>;
  stop(): Promise<void>;
}

export async function startBenchNatsCluster(size = 3): Promise<BenchNatsCluster> {
  const identities = {
    dispatcher: createIdentity('dispatcher', { kind: 'dispatcher' }),
    agent: createIdentity('agent', { kind: 'agent' }),
  };
  const password = createClusterPassword();
  const names = Array.from({ length: size }, (_, i) => `n${i + 1}`);
  const clientPorts = await Promise.all(names.map(() => freePort()));
  const routePorts = await Promise.all(names.map(() => freePort()));
  const dirs = await Promise.all(names.map((n) => mkdtemp(join(tmpdir(), `toolbus-bench-nats-${n}-`))));
  const procs: Array<ChildProcess | null> = [];
  let admin: NatsConnection | undefined;

  const stop = async () => {
    await admin?.close().catch(() => undefined);
    await Promise.all(
      procs.map(async (p) => {
        if (!p || p.exitCode !== null || p.signalCode !== null) return;
        const exited = new Promise((resolve) => p.once('exit', resolve));
        p.kill('SIGTERM');
        await exited;
      }),
    );
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  };
  try {
    for (let i = 0; i < size; i++) {
      const conf = join(dirs[i]!, 'nats.conf');
      writeFileSync(
        conf,
        natsServerConfig({
          port: clientPorts[i]!,
          storeDir: join(dirs[i]!, 'js'),
          identities: Object.values(identities),
          cluster: {
            serverName: names[i]!,
            name: 'toolbus-bench',
            port: routePorts[i]!,
            routes: routePorts.filter((_, k) => k !== i).map((p) => `127.0.0.1:${p}`),
            password,
          },
        }),
      );
      procs.push(spawn(process.env['NATS_SERVER_BIN'] ?? 'nats-server', ['-c', conf], { stdio: 'ignore' }));
    }
    await Promise.all(clientPorts.map((p) => waitForPort(p, 15_000)));
    const url = clientPorts.map((p) => `nats://127.0.0.1:${p}`).join(',');
    const connectAdmin = async () =>
      (admin ??= await connectNats(url, 'bench-cluster-admin', { nkeySeed: identities.dispatcher.seed }));
    // JetStream answers once the nodes have a meta leader.
    for (let k = 0; ; k++) {
      try {
        await (await jetstreamManager(await connectAdmin(), { timeout: 2_000 })).getAccountInfo();
        break;
      } catch (e) {
        if (k > 300) throw new Error('the bench NATS cluster has no JetStream after a minute', { cause: e });
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    const nodes: BenchNatsNode[] = names.map((name, i) => ({
      name,
      pid: () => procs[i]?.pid,
      kill: async () => {
        const p = procs[i];
        if (!p || p.exitCode !== null || p.signalCode !== null) return;
        const exited = new Promise((resolve) => p.once('exit', resolve));
        p.kill('SIGKILL');
        await exited;
      },
    }));
    return {
      url,
      nodes,
      identities,
      serviceEnv: { dispatcher: natsEnvOf(identities.dispatcher) },
      async streamLeader() {
        try {
          const jsm = await jetstreamManager(await connectAdmin(), { timeout: 2_000 });
          const leader = (await jsm.streams.info(jetstreamNames.requestsStream)).cluster?.leader;
          return nodes.find((n) => n.name === leader);
        } catch {
          return undefined;
        }
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
