import type { Queryable } from './sql.ts';

export interface Checkpoint {
  /** formatPosition of the last event applied or skipped; null before the first. */
  position: string | null;
  /** Events applied or skipped so far. */
  events: number;
  updatedAt: Date;
  /**
   * The row's version: the id of the transaction that wrote it last (PostgreSQL's `xmin`). Any
   * write changes it, also one that leaves the position where it was (a rebuild's swap can).
   */
  version: string | null;
}

export async function ensureCheckpoint(db: Queryable, projection: string): Promise<void> {
  await db.query('insert into projector_checkpoints (projection) values ($1) on conflict do nothing', [
    projection,
  ]);
}

export async function readCheckpoint(
  db: Queryable,
  projection: string,
  forUpdate = false,
): Promise<Checkpoint> {
  const { rows } = await db.query<{
    position: string | null;
    events: number;
    updated_at: Date;
    version: string;
  }>(
    `select position, events, updated_at, xmin::text as version from projector_checkpoints
      where projection = $1${forUpdate ? ' for update' : ''}`,
    [projection],
  );
  const row = rows[0];
  return row
    ? { position: row.position, events: Number(row.events), updatedAt: row.updated_at, version: row.version }
    : { position: null, events: 0, updatedAt: new Date(0), version: null };
}

export async function writeCheckpoint(
  db: Queryable,
  projection: string,
  position: string,
  events: number,
): Promise<void> {
  await db.query(
    'update projector_checkpoints set position = $2, events = $3, updated_at = now() where projection = $1',
    [projection, position, events],
  );
}

/**
 * Writes the checkpoint row without moving it: a new version (`Checkpoint.version`), which a live
 * batch read before this write will not find, and so rolls back.
 */
export async function touchCheckpoint(db: Queryable, projection: string): Promise<void> {
  await db.query('update projector_checkpoints set updated_at = now() where projection = $1', [projection]);
}

/** The advisory-lock key of a projection (one active instance) and of its rebuild (one at a time). */
export const lockKey = (projection: string): string => `toolbus-projector:${projection}`;
export const rebuildLockKey = (projection: string): string => `toolbus-projector-rebuild:${projection}`;
