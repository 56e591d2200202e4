import { randomBytes } from 'node:crypto';
import pg from 'pg';

const BASE_URL = process.env['TEST_DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test';

export interface TestDatabase {
  /** Connection string of a fresh, empty database owned by this test. */
  url: string;
  name: string;
  drop(): Promise<void>;
}

/**
 * A fresh database on the shared PostgreSQL server, so tests running side by side never see each
 * other's tables. Dropped on `drop()` (pass `t` to drop it at teardown).
 */
export async function createTestDatabase(t?: {
  teardown(fn: () => Promise<void> | void): void;
}): Promise<TestDatabase> {
  const name = `toolbus_t_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: BASE_URL });
  await admin.connect();
  try {
    await admin.query(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(BASE_URL);
  url.pathname = `/${name}`;
  const db: TestDatabase = {
    url: url.toString(),
    name,
    async drop() {
      const c = new pg.Client({ connectionString: BASE_URL });
      await c.connect();
      try {
        await c.query(`drop database if exists ${name} with (force)`);
      } finally {
        await c.end();
      }
    },
  };
  t?.teardown(() => db.drop());
  return db;
}
