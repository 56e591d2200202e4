import type { PendingApproval, ToolEvent } from '../../contracts/index.ts';
import { createPool, migrate, type Migration, type Pool } from '../../lib/db.ts';
import type { Execution, ExecutionRef } from './streams.ts';

/**
 * The waiting list of approvals: one row per execution that asked for approval, written after the
 * append of its `ToolApprovalRequested` and settled once it no longer waits. It only finds
 * executions; the event store stays the record (every decision loads the stream and goes through
 * the decider). PostgreSQL (DATABASE_URL) whichever the event store is, like the relay's
 * checkpoint. Why a table and how it heals after a crash: docs/decisions/0022-approval-waits.md.
 */

const TABLE = 'toolbus_approval_waits';

export const approvalMigrations: Migration[] = [
  {
    version: 1,
    name: 'approval waits',
    sql: `
      create table ${TABLE} (
        execution_id uuid primary key,
        user_id text not null,
        request_id text not null,
        correlation_id text not null,
        tool text not null,
        version text,
        args jsonb not null,
        args_hash text not null,
        approver_roles text[] not null,
        allow_self_approval boolean not null,
        deadline timestamptz not null,
        requested_at timestamptz not null,
        settled_at timestamptz
      );
      create index ${TABLE}_open_by_deadline on ${TABLE} (deadline) where settled_at is null;
      create index ${TABLE}_open_by_age on ${TABLE} (requested_at, execution_id) where settled_at is null;
    `,
  },
  {
    version: 2,
    name: 'open approval waits by user',
    sql: `create index ${TABLE}_open_by_user on ${TABLE} (user_id, deadline) where settled_at is null;`,
  },
];

/** A waiting execution as the list keeps it: enough to load its stream and to show it. */
export interface ApprovalWait extends PendingApproval {
  requestId: string;
  correlationId: string;
  allowSelfApproval: boolean;
}

interface Row {
  execution_id: string;
  user_id: string;
  request_id: string;
  correlation_id: string;
  tool: string;
  version: string | null;
  args: PendingApproval['args'];
  args_hash: string;
  approver_roles: string[];
  allow_self_approval: boolean;
  deadline: Date;
  requested_at: Date;
}

const fromRow = (r: Row): ApprovalWait => ({
  executionId: r.execution_id,
  userId: r.user_id,
  requestId: r.request_id,
  correlationId: r.correlation_id,
  tool: r.tool,
  version: r.version,
  args: r.args,
  argsHash: r.args_hash,
  approverRoles: r.approver_roles,
  allowSelfApproval: r.allow_self_approval,
  deadline: r.deadline.toISOString(),
  requestedAt: r.requested_at.toISOString(),
});

/** The ref that loads the execution of a wait. */
export const refOfWait = (w: ApprovalWait): ExecutionRef => ({
  userId: w.userId,
  executionId: w.executionId,
  requestId: w.requestId,
  correlationId: w.correlationId,
});

/** `<requestedAt>|<executionId>`, base64url: where the next page starts. */
const encodeCursor = (w: Pick<ApprovalWait, 'requestedAt' | 'executionId'>): string =>
  Buffer.from(`${w.requestedAt}|${w.executionId}`).toString('base64url');

export class CursorError extends Error {}

function decodeCursor(cursor: string): { requestedAt: string; executionId: string } {
  const [requestedAt, executionId, ...rest] = Buffer.from(cursor, 'base64url').toString('utf8').split('|');
  if (!requestedAt || !executionId || rest.length > 0 || Number.isNaN(Date.parse(requestedAt)))
    throw new CursorError('after must be the next cursor of a previous page');
  if (!/^[0-9a-f-]{36}$/.test(executionId))
    throw new CursorError('after must be the next cursor of a previous page');
  return { requestedAt, executionId };
}

/**
 * The wait an execution's events describe, or null when it does not wait (any more). Reads the
 * request and the approval asked for from the events, so a redelivery can write it again.
 */
export function waitOf(execution: Execution): ApprovalWait | null {
  if (execution.state.status !== 'awaiting_approval') return null;
  const find = <T extends ToolEvent['type']>(type: T) =>
    execution.events.find((e): e is Extract<ToolEvent, { type: T }> => e.type === type);
  const requested = find('ToolRequested');
  const asked = find('ToolApprovalRequested');
  if (!requested || !asked) return null;
  return {
    executionId: execution.ref.executionId,
    userId: execution.ref.userId,
    requestId: requested.metadata.requestId,
    correlationId: requested.metadata.correlationId,
    tool: requested.data.tool,
    version: requested.data.version,
    args: requested.data.args,
    argsHash: asked.data.argsHash,
    approverRoles: asked.data.approverRoles,
    allowSelfApproval: asked.data.allowSelfApproval,
    deadline: asked.data.deadline,
    requestedAt: asked.metadata.occurredAt,
  };
}

export class ApprovalWaits {
  private constructor(private readonly pool: Pool) {}

  static async open(connectionString: string): Promise<ApprovalWaits> {
    const pool = createPool(connectionString, { max: 4, application: 'toolbus-dispatcher-approvals' });
    try {
      await migrate(pool, 'dispatcher-approvals', approvalMigrations);
    } catch (e) {
      await pool.end();
      throw e;
    }
    return new ApprovalWaits(pool);
  }

  /** Keeps a wait (again): a no-op when it is there already, also when it was settled. */
  async record(w: ApprovalWait): Promise<void> {
    await this.pool.query(
      `insert into ${TABLE} (execution_id, user_id, request_id, correlation_id, tool, version, args,
         args_hash, approver_roles, allow_self_approval, deadline, requested_at)
       values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
       on conflict (execution_id) do nothing`,
      [
        w.executionId,
        w.userId,
        w.requestId,
        w.correlationId,
        w.tool,
        w.version,
        JSON.stringify(w.args),
        w.argsHash,
        w.approverRoles,
        w.allowSelfApproval,
        w.deadline,
        w.requestedAt,
      ],
    );
  }

  /** The execution no longer waits (approved, denied, expired, cancelled, given up). */
  async settle(executionId: string): Promise<void> {
    await this.pool.query(
      `update ${TABLE} set settled_at = now() where execution_id = $1 and settled_at is null`,
      [executionId],
    );
  }

  /** The wait of an execution, settled or not: who the approver acts on (their path names no user). */
  async find(executionId: string): Promise<ApprovalWait | null> {
    const { rows } = await this.pool.query<Row>(`select * from ${TABLE} where execution_id = $1`, [
      executionId,
    ]);
    return rows[0] ? fromRow(rows[0]) : null;
  }

  /**
   * Open waits that `userId` holding `roles` may decide (one of the roles asked for; not their own
   * call unless self-approval is allowed), deadline not passed at `now`, oldest first, after the
   * cursor; `next` is null on the last page.
   */
  async pending(o: {
    userId: string;
    roles: readonly string[];
    now: Date;
    after?: string | undefined;
    limit: number;
  }): Promise<{ waits: ApprovalWait[]; next: string | null }> {
    const after = o.after ? decodeCursor(o.after) : null;
    const { rows } = await this.pool.query<Row>(
      `select * from ${TABLE}
        where settled_at is null and deadline > $1 and approver_roles && $2::text[]
          and (allow_self_approval or user_id <> $6)
          and ($3::timestamptz is null or (requested_at, execution_id) > ($3::timestamptz, $4::uuid))
        order by requested_at, execution_id
        limit $5`,
      [o.now, [...o.roles], after?.requestedAt ?? null, after?.executionId ?? null, o.limit + 1, o.userId],
    );
    const waits = rows.slice(0, o.limit).map(fromRow);
    const last = waits.at(-1);
    return { waits, next: rows.length > o.limit && last ? encodeCursor(last) : null };
  }

  /** How many calls of `userId` wait, deadline not passed at `now`: counted up to `atMost`. */
  async openOf(userId: string, now: Date, atMost: number): Promise<number> {
    const { rows } = await this.pool.query<{ n: number }>(
      `select count(*)::int as n from (
         select 1 from ${TABLE} where user_id = $1 and settled_at is null and deadline > $2 limit $3) w`,
      [userId, now, atMost],
    );
    return rows[0]?.n ?? 0;
  }

  /** Open waits whose deadline passed at `now`, earliest first. */
  async due(now: Date, limit: number): Promise<ApprovalWait[]> {
    const { rows } = await this.pool.query<Row>(
      `select * from ${TABLE} where settled_at is null and deadline <= $1 order by deadline limit $2`,
      [now, limit],
    );
    return rows.map(fromRow);
  }

  close(): Promise<void> {
    return this.pool.end();
  }
}
