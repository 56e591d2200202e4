import type { Migration } from '../../lib/db.ts';

/** The schema readers query. A rebuild builds a copy next to it and renames it into place. */
export const LIVE_SCHEMA = 'projection';
/** The one projection this service runs: the name of its checkpoint row and of its lock. */
export const PROJECTION_NAME = 'read-models';

/**
 * Migrations of component 'projector'. The read-model tables live in schema `projection`; a
 * rebuild copies their structure with `create table ... (like ... including all)`, so these
 * migrations are the only definition of the tables. Indexes are declared without names so that
 * the copies get the same names PostgreSQL chooses here (a later migration may name them).
 */
export const projectorMigrations: Migration[] = [
  {
    version: 1,
    name: 'checkpoints and the read models',
    sql: `
      create table projector_checkpoints (
        projection text primary key,
        -- formatPosition of the last event applied or skipped; null before the first.
        position text,
        -- events applied or skipped so far (a crash never loses or repeats one).
        events bigint not null default 0,
        updated_at timestamptz not null default now()
      );

      create schema ${LIVE_SCHEMA};

      create table ${LIVE_SCHEMA}.executions (
        execution_id uuid primary key,
        user_id text not null,
        request_id text not null,
        correlation_id text not null,
        tool text,
        version text,
        status text not null check (status in ('requested', 'executing', 'completed', 'failed')),
        attempts int not null,
        requested_at timestamptz not null,
        started_at timestamptz,
        finished_at timestamptz,
        duration_ms double precision,
        error_code text,
        error_message text,
        cached boolean,
        event_count int not null,
        last_revision bigint not null
      );
      create index on ${LIVE_SCHEMA}.executions (user_id, requested_at desc, execution_id desc);
      create index on ${LIVE_SCHEMA}.executions (requested_at desc, execution_id desc);

      create table ${LIVE_SCHEMA}.user_activity (
        user_id text primary key,
        executions bigint not null,
        completed bigint not null,
        failed bigint not null,
        refused bigint not null,
        events bigint not null,
        first_activity_at timestamptz not null,
        last_activity_at timestamptz not null
      );

      create table ${LIVE_SCHEMA}.tool_metrics_minute (
        tool text not null,
        minute timestamptz not null,
        completed bigint not null,
        failed bigint not null,
        refused bigint not null,
        cached bigint not null,
        error_codes jsonb not null,
        latency_count bigint not null,
        latency_sum_ms double precision not null,
        latency_max_ms double precision,
        latency_histogram bigint[] not null,
        primary key (tool, minute)
      );
      create index on ${LIVE_SCHEMA}.tool_metrics_minute (minute);

      create table ${LIVE_SCHEMA}.tool_metrics (
        tool text primary key,
        completed bigint not null,
        failed bigint not null,
        refused bigint not null,
        cached bigint not null,
        error_codes jsonb not null,
        latency_count bigint not null,
        latency_sum_ms double precision not null,
        latency_max_ms double precision,
        latency_histogram bigint[] not null
      );

      create table ${LIVE_SCHEMA}.projection_skipped (
        stream_id text not null,
        revision bigint not null,
        position text,
        event_id text not null,
        event_type text not null,
        reason text not null,
        recorded_at timestamptz,
        primary key (stream_id, revision)
      );
    `,
  },
  {
    version: 2,
    name: 'approval statuses and cancel requests of executions',
    sql: `
      alter table ${LIVE_SCHEMA}.executions drop constraint if exists executions_status_check;
      alter table ${LIVE_SCHEMA}.executions add constraint executions_status_check check (
        status in ('requested', 'awaiting_approval', 'approved', 'executing', 'completed', 'failed')
      );
      -- When a cancel was asked for (ToolCancelRequested); null when nobody asked.
      alter table ${LIVE_SCHEMA}.executions add column cancel_requested_at timestamptz;
    `,
  },
  {
    version: 3,
    name: 'the decider state of open executions',
    sql: `
      -- The execution decider's state (contracts/execution.ts) while the execution is open; null
      -- once it ended. Rows from before this column get theirs from their columns (model.ts,
      -- deciderStateOf); a rebuild re-folds them from the store.
      alter table ${LIVE_SCHEMA}.executions add column state jsonb;
    `,
  },
];
