import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestDatabase } from '../../test/support/postgres.ts';
import { startNats, startPostgres, startRedis, type OwnedServer } from '../../test/support/processes.ts';
import type { StartRequest, Started, CpuSample } from '../server.ts';
import { forkChild, type Child } from './ipc.ts';

/**
 * What the benchmarks share: the mode and its durations, test-owned NATS and Redis, fresh
 * databases, and the child processes (services, references, load generators), all of which are
 * stopped and dropped at the end whatever happens.
 */
export interface Durations {
  /**
   * Fixed-load latency: `latencyRounds` rounds, each one segment per system (references and Toolbus
   * in turn), each segment `latencySegmentMs` long of which the first `latencySegmentWarmupMs` are
   * not recorded. Histograms of a system's segments are merged.
   */
  latencyRounds: number;
  latencySegmentMs: number;
  latencySegmentWarmupMs: number;
  /** One step of the throughput ladder. */
  stepMs: number;
  stepWarmupMs: number;
  /**
   * The first rate and the factor between steps. A ladder climbs until the system fails; `maxRate`
   * is only a safety cap, far above what a load generator here can send: a system still passing
   * there has a figure that is a lower bound, and the report says so.
   */
  stepFactor: number;
  firstRate: number;
  maxRate: number;
  /**
   * A step in which the load generator sent a request later than this after it was due fails, and
   * the report says that the generator (or the machine under it), not the system, bounded it.
   */
  maxSendLagMs: number;
  /** Retry a failed step once before counting the rate as failed (noise). */
  retryStep: boolean;
  /** A system's ladder stops after this many failed rates in a row (a stall of the machine fails one rate, not the system). */
  failedRatesToStop: number;
  /**
   * The cluster's fault (benchmark 2c): load at half the cluster's capacity for
   * `clusterBeforeKillMs`, then the intake stream's leader node is killed, and the load goes on for
   * `clusterAfterKillMs` (the window in which answers must resume).
   */
  clusterBeforeKillMs: number;
  clusterAfterKillMs: number;
  /**
   * Overload (2b): twice the capacity for `stepMs`, then half of it for `overloadRecoveryMs` (the
   * window in which latency must come back under the bound), then at most `overloadDrainMs` for the
   * last answers.
   */
  overloadRecoveryMs: number;
  overloadDrainMs: number;
  lagMs: number;
  lagWarmupMs: number;
  rebuildEvents: number;
  rebuildRounds: number;
  /** Rounds of segments (reference and notifier in turn), as for latency. */
  notifyRounds: number;
  notifySegmentMs: number;
  notifySegmentWarmupMs: number;
  notifyRate: number;
  notifyClients: number;
  auditEvents: number;
  auditRounds: number;
}

export const FULL: Durations = {
  latencyRounds: 4,
  latencySegmentMs: 6_500,
  latencySegmentWarmupMs: 1_500,
  stepMs: 6_000,
  stepWarmupMs: 1_500,
  stepFactor: 1.25,
  firstRate: 50,
  maxRate: 50_000,
  maxSendLagMs: 50,
  retryStep: true,
  failedRatesToStop: 2,
  clusterBeforeKillMs: 5_000,
  clusterAfterKillMs: 25_000,
  overloadRecoveryMs: 20_000,
  overloadDrainMs: 60_000,
  lagMs: 20_000,
  lagWarmupMs: 4_000,
  rebuildEvents: 100_000,
  rebuildRounds: 2,
  notifyRounds: 3,
  notifySegmentMs: 8_000,
  notifySegmentWarmupMs: 2_000,
  notifyRate: 10,
  notifyClients: 1_000,
  auditEvents: 100_002,
  auditRounds: 3,
};

export const QUICK: Durations = {
  latencyRounds: 1,
  latencySegmentMs: 3_000,
  latencySegmentWarmupMs: 1_000,
  stepMs: 1_500,
  stepWarmupMs: 500,
  stepFactor: 2.5,
  firstRate: 50,
  maxRate: 50_000,
  maxSendLagMs: 50,
  retryStep: false,
  failedRatesToStop: 1,
  clusterBeforeKillMs: 2_000,
  clusterAfterKillMs: 8_000,
  overloadRecoveryMs: 5_000,
  overloadDrainMs: 30_000,
  lagMs: 3_000,
  lagWarmupMs: 1_000,
  rebuildEvents: 6_000,
  rebuildRounds: 1,
  notifyRounds: 1,
  notifySegmentMs: 3_000,
  notifySegmentWarmupMs: 1_000,
  notifyRate: 10,
  notifyClients: 1_000,
  auditEvents: 20_001,
  auditRounds: 1,
};

export interface Service {
  child: Child;
  started: Started;
  cpu(): Promise<CpuSample>;
}

export class BenchContext {
  readonly runId = `${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
  readonly logDir: string;
  readonly jwtSecret = randomBytes(32).toString('hex');
  readonly workerSecret = randomBytes(32).toString('hex');
  nats!: OwnedServer;
  redis!: OwnedServer;
  /** Set with --own-postgres: a PostgreSQL server of this run's own instead of the shared one. */
  postgres: OwnedServer | null = null;
  private readonly children = new Set<Child>();
  private readonly databases: TestDatabase[] = [];
  /** Servers started for one benchmark's lane (a second nats-server, say): stopped at the end too. */
  private readonly extraServers: OwnedServer[] = [];
  /** Clean-ups registered by a benchmark (a NATS cluster's nodes and proxies): run at the end, newest first. */
  private readonly deferred: Array<() => Promise<void> | void> = [];

  constructor(
    readonly mode: 'full' | 'quick',
    readonly d: Durations,
    readonly ownPostgres = false,
  ) {
    this.logDir = join(tmpdir(), `toolbus-bench-${this.runId}`);
    // The children's logs name users and requests: readable by this OS user only.
    mkdirSync(this.logDir, { recursive: true, mode: 0o700 });
  }

  log(message: string): void {
    process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
  }

  async open(): Promise<void> {
    this.nats = await startNats();
    this.redis = await startRedis();
    if (this.ownPostgres) {
      // initdb'd for this run, fsync and synchronous_commit on (test/support/processes.ts); the
      // fresh databases below are created there (createTestDatabase reads TEST_DATABASE_URL).
      this.postgres = await startPostgres();
      process.env['TEST_DATABASE_URL'] = this.postgres.url;
    }
  }

  /**
   * Another nats-server of this run's own (JetStream in a temporary directory), for a lane that
   * must not share the intake stream with the others; `stopServer` ends it, `close` in any case.
   */
  async extraNats(): Promise<OwnedServer> {
    const server = await startNats();
    this.extraServers.push(server);
    return server;
  }

  /**
   * A `Teardown` for test/support helpers (`startSecuredNatsCluster`): what they register runs when
   * `run()` is called, or at `close` in any case (also on Ctrl-C).
   */
  teardown(): { teardown(fn: () => Promise<void> | void): void; run(): Promise<void> } {
    const fns: Array<() => Promise<void> | void> = [];
    const run = async () => {
      for (const fn of fns.splice(0).reverse()) {
        const k = this.deferred.indexOf(fn);
        if (k >= 0) this.deferred.splice(k, 1);
        await Promise.resolve()
          .then(fn)
          .catch(() => undefined);
      }
    };
    return {
      teardown: (fn) => {
        fns.push(fn);
        this.deferred.push(fn);
      },
      run,
    };
  }

  async stopServer(server: OwnedServer): Promise<void> {
    const k = this.extraServers.indexOf(server);
    if (k >= 0) this.extraServers.splice(k, 1);
    await server.stop().catch(() => undefined);
  }

  async database(): Promise<TestDatabase> {
    // Imported here, after open(): it reads TEST_DATABASE_URL when it loads.
    const { createTestDatabase } = await import('../../test/support/postgres.ts');
    const db = await createTestDatabase();
    this.databases.push(db);
    return db;
  }

  /** The environment of a Toolbus service in this run (PostgreSQL event store, own NATS and Redis). */
  serviceEnv(databaseUrl: string, extra: Record<string, string> = {}): Record<string, string> {
    return {
      NATS_URL: this.nats.url,
      REDIS_URL: this.redis.url,
      DATABASE_URL: databaseUrl,
      KURRENTDB_URL: '',
      JWT_SECRET: this.jwtSecret,
      WORKER_SECRET: this.workerSecret,
      HOST: '127.0.0.1',
      LOG_LEVEL: 'info',
      ...extra,
    };
  }

  async fork(script: 'server.ts' | 'loadgen.ts', name: string): Promise<Child> {
    // BENCH_PROFILE=dispatcher,notifier: those children write a V8 CPU profile into the log directory.
    const profiled = (process.env['BENCH_PROFILE'] ?? '')
      .split(',')
      .some((p) => p !== '' && name.startsWith(p));
    const child = await forkChild(script, [name], {
      name,
      logFile: join(this.logDir, `${name}.log`),
      ...(profiled ? { profileDir: this.logDir } : {}),
    });
    this.children.add(child);
    void child.exited.then(() => this.children.delete(child));
    return child;
  }

  async service(name: string, request: StartRequest): Promise<Service> {
    const child = await this.fork('server.ts', name);
    try {
      const started = await child.call<Started>('start', request, 120_000);
      return { child, started, cpu: () => child.call<CpuSample>('cpu') };
    } catch (e) {
      await child.stop();
      throw e;
    }
  }

  async stopChild(child: Child): Promise<void> {
    await child.stop();
    this.children.delete(child);
  }

  async close(): Promise<void> {
    await Promise.all([...this.children].map((c) => c.stop().catch(() => undefined)));
    this.children.clear();
    for (const server of this.extraServers.splice(0)) await server.stop().catch(() => undefined);
    for (const fn of this.deferred.splice(0).reverse())
      await Promise.resolve()
        .then(fn)
        .catch(() => undefined);
    await this.nats?.stop().catch(() => undefined);
    await this.redis?.stop().catch(() => undefined);
    for (const db of this.databases.splice(0)) await db.drop().catch(() => undefined);
    await this.postgres?.stop().catch(() => undefined);
  }
}

/** CPU microseconds (user + system) between two samples. */
export const cpuUs = (a: CpuSample, b: CpuSample): number => b.userUs - a.userUs + (b.systemUs - a.systemUs);
