import { readFileSync } from 'node:fs';
import pg from 'pg';

/** CPU time (user + system, µs) of any process on this machine, from /proc (10 ms resolution). */
export function procCpuUs(pid: number | undefined): number | null {
  if (!pid) return null;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // After the command: state(0) ... utime(11) stime(12), in clock ticks (100 per second on Linux).
    return (Number(fields[11]) + Number(fields[12])) * 10_000;
  } catch {
    return null;
  }
}

/** System calls that wrote (`syscw` of /proc/<pid>/io: sockets, pipes, files) by a process so far. */
export function procWriteCalls(pid: number | undefined): number | null {
  if (!pid) return null;
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    const m = /^syscw: (\d+)$/m.exec(io);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/**
 * Where the CPU of a lane's dispatches goes, by process: the serving process(es) (dispatchers, a
 * BullMQ worker), nats-server(s), the PostgreSQL backends of the lane's database, redis-server and
 * the load generator. `postgresServer` is every process pg_stat_activity lists (all databases and
 * the background writers): on the shared server it includes other work, so it is not in the total.
 */
export const COST_ROLES = ['service', 'nats', 'postgres', 'redis', 'loadgen'] as const;
export type CostRole = (typeof COST_ROLES)[number];
/**
 * Rows outside the total: the whole PostgreSQL server, and the TCP proxies a test NATS cluster puts
 * on every route and client connection (test/support/processes.ts), which run in the bench's own
 * runner process and which a real deployment does not have.
 */
export type CostExtra = 'postgresServer' | 'proxies';
export type Cost = Record<CostRole | CostExtra, number | null>;

export interface CostSources {
  processes: Array<{ role: CostRole | 'proxies'; pid: () => number | undefined }>;
  /** The database whose backends serve the lane, or null when it writes none. */
  database: string | null;
}

interface CostSample {
  processes: Array<{ role: CostRole | 'proxies'; pid: number | undefined }>;
  databasePids: number[];
  serverPids: number[];
  cpu: Map<number, number>;
}

/** The database name of a PostgreSQL URL. */
export const databaseOf = (url: string): string => decodeURIComponent(new URL(url).pathname.slice(1));

/**
 * Samples the CPU of a lane's processes before and after a ladder step, from /proc (so the same
 * clock for Node.js children, servers and PostgreSQL backends). PostgreSQL backends come from
 * pg_stat_activity, through one connection of its own that is left out of the sums.
 */
export class CostMeter {
  private constructor(private readonly client: pg.Client) {}

  static async open(connectionString: string): Promise<CostMeter> {
    const client = new pg.Client({ connectionString, application_name: 'bench-cost-meter' });
    await client.connect();
    return new CostMeter(client);
  }

  async sample(s: CostSources): Promise<CostSample> {
    const { rows } = await this.client.query<{ pid: number; datname: string | null }>(
      'select pid, datname from pg_stat_activity where pid <> pg_backend_pid()',
    );
    const processes = s.processes.map((p) => ({ role: p.role, pid: p.pid() }));
    const cpu = new Map<number, number>();
    for (const pid of [...processes.map((p) => p.pid), ...rows.map((r) => r.pid)]) {
      const us = procCpuUs(pid);
      if (pid && us !== null) cpu.set(pid, us);
    }
    return {
      processes,
      databasePids: s.database === null ? [] : rows.filter((r) => r.datname === s.database).map((r) => r.pid),
      serverPids: rows.map((r) => r.pid),
      cpu,
    };
  }

  /**
   * CPU µs per role between two samples. A backend that appeared in between counts from its start
   * (its connection set-up included); one that ended in between is lost (pools keep theirs open).
   */
  static between(a: CostSample, b: CostSample): Cost {
    const used = (pid: number | undefined): number | null => {
      if (!pid) return null;
      const end = b.cpu.get(pid);
      if (end === undefined) return null;
      return end - (a.cpu.get(pid) ?? 0);
    };
    const sum = (pids: Array<number | undefined>): number | null => {
      const known = pids.map(used).filter((x): x is number => x !== null);
      return known.length ? known.reduce((x, y) => x + y, 0) : null;
    };
    const cost: Cost = {
      service: null,
      nats: null,
      postgres: null,
      redis: null,
      loadgen: null,
      postgresServer: null,
      proxies: null,
    };
    for (const role of [...COST_ROLES, 'proxies'] as const) {
      const pids = b.processes.filter((p) => p.role === role).map((p) => p.pid);
      if (pids.length) cost[role] = sum(pids);
    }
    if (b.databasePids.length) cost.postgres = sum(b.databasePids);
    cost.postgresServer = sum(b.serverPids);
    return cost;
  }

  async close(): Promise<void> {
    await this.client.end().catch(() => undefined);
  }
}
