import { migrate, type Migration, type Pool } from '../../lib/db.ts';

/**
 * Who looked at whose history: every replay, verification and checkpoint, by HTTP or CLI, is a row
 * in `audit_log`, written before the first event is read (no row, no replay) and completed with
 * its outcome when it ends. It lives in PostgreSQL, never in the user's stream, which holds only
 * the four tool events.
 */
export const auditLogMigrations: Migration[] = [
  {
    version: 1,
    name: 'audit_log',
    sql: `
      create table audit_log (
        id bigint generated always as identity primary key,
        at timestamptz not null default clock_timestamp(),
        actor text not null,
        actor_roles text[] not null default '{}',
        via text not null check (via in ('http', 'cli')),
        action text not null check (action in ('replay', 'verify', 'checkpoint')),
        subject_user text not null,
        range jsonb not null default '{}',
        finished_at timestamptz,
        outcome text check (outcome in ('ok', 'broken', 'refused', 'denied', 'aborted', 'error')),
        events bigint,
        detail jsonb
      );
      create index audit_log_subject on audit_log (subject_user, at);
      create index audit_log_actor on audit_log (actor, at);
    `,
  },
];

export type AuditAction = 'replay' | 'verify' | 'checkpoint';
export type AuditOutcome = 'ok' | 'broken' | 'refused' | 'denied' | 'aborted' | 'error';

export interface AuditEntry {
  actor: string;
  actorRoles: readonly string[];
  via: 'http' | 'cli';
  action: AuditAction;
  subjectUser: string;
  range?: Record<string, unknown>;
}

export interface AuditLog {
  /** Records the start of an access; resolves to its id. Rejects when it cannot be recorded. */
  begin(entry: AuditEntry): Promise<number>;
  /** Records how it ended. Never rejects (a failure is reported to `onError`). */
  end(id: number, outcome: AuditOutcome, events: number | null, detail?: unknown): Promise<void>;
  /** A refused access (wrong role), recorded as already ended. */
  denied(entry: AuditEntry, reason: string): Promise<void>;
}

export async function migrateAuditLog(pool: Pool): Promise<void> {
  await migrate(pool, 'auditor', auditLogMigrations);
}

export function createAuditLog(pool: Pool, onError: (e: Error) => void = () => undefined): AuditLog {
  const insert = async (entry: AuditEntry, finished: { outcome: AuditOutcome; detail: unknown } | null) => {
    const { rows } = await pool.query<{ id: number }>(
      `insert into audit_log (actor, actor_roles, via, action, subject_user, range, finished_at, outcome, detail)
       values ($1, $2, $3, $4, $5, $6, case when $7::text is null then null else clock_timestamp() end, $7, $8)
       returning id`,
      [
        entry.actor,
        [...entry.actorRoles],
        entry.via,
        entry.action,
        entry.subjectUser,
        JSON.stringify(entry.range ?? {}),
        finished?.outcome ?? null,
        finished ? JSON.stringify(finished.detail ?? null) : null,
      ],
    );
    return rows[0]!.id;
  };
  return {
    begin: (entry) => insert(entry, null),
    async end(id, outcome, events, detail) {
      try {
        await pool.query(
          `update audit_log set finished_at = clock_timestamp(), outcome = $2, events = $3, detail = $4 where id = $1`,
          [id, outcome, events, detail === undefined ? null : JSON.stringify(detail)],
        );
      } catch (e) {
        onError(e as Error);
      }
    },
    async denied(entry, reason) {
      try {
        await insert(entry, { outcome: 'denied', detail: { reason } });
      } catch (e) {
        onError(e as Error);
      }
    },
  };
}
