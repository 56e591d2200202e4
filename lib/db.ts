import pg from 'pg';

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

/** bigint columns come back as strings by default; our counts and revisions fit in a number. */
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

export function createPool(
  connectionString: string,
  options: { max?: number; application?: string } = {},
): pg.Pool {
  const pool = new pg.Pool({
    connectionString,
    max: options.max ?? 10,
    application_name: options.application ?? 'toolbus',
    // The record is only the record once it is on disk: refuse a server set to commit asynchronously.
    options: '-c synchronous_commit=on',
  });
  // A client losing its server must not crash the process, idle (the pool's 'error') or checked
  // out between two queries (the client's own 'error'): the next query on it fails and says why.
  pool.on('error', () => undefined);
  pool.on('connect', (client) => client.on('error', () => undefined));
  return pool;
}

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/**
 * Applies `migrations` of one component in version order, each once, each in its own transaction,
 * under an advisory lock so that concurrent starts do not race. Safe to run at every start.
 */
export async function migrate(pool: pg.Pool, component: string, migrations: Migration[]): Promise<number[]> {
  const client = await pool.connect();
  try {
    await client.query(`select pg_advisory_lock(hashtextextended('toolbus-migrations', 0))`);
    await client.query(`create table if not exists toolbus_migrations (
      component text not null,
      version int not null,
      name text not null,
      applied_at timestamptz not null default now(),
      primary key (component, version))`);
    const { rows } = await client.query<{ version: number }>(
      'select version from toolbus_migrations where component = $1',
      [component],
    );
    const done = new Set(rows.map((r) => r.version));
    const applied: number[] = [];
    for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
      if (done.has(m.version)) continue;
      await client.query('begin');
      try {
        await client.query(m.sql);
        await client.query('insert into toolbus_migrations (component, version, name) values ($1, $2, $3)', [
          component,
          m.version,
          m.name,
        ]);
        await client.query('commit');
      } catch (e) {
        await client.query('rollback');
        throw new Error(`migration ${component} ${m.version} (${m.name}) failed: ${(e as Error).message}`, {
          cause: e,
        });
      }
      applied.push(m.version);
    }
    return applied;
  } finally {
    const unlocked = await client
      .query(`select pg_advisory_unlock(hashtextextended('toolbus-migrations', 0))`)
      .then(
        () => true,
        () => false,
      );
    // A session whose unlock failed may still hold the lock: end it rather than pool it.
    client.release(!unlocked);
  }
}
