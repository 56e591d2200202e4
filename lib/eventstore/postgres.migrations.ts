import type { Migration } from '../db.ts';

/**
 * The append function. Version 1 sent `pg_notify` inside it; PostgreSQL holds one global lock on
 * its notification queue from a notifying transaction's pre-commit to the end of its commit (the
 * WAL flush included), so every append waited for the one before it to reach the disk. Version 2
 * leaves the notification to the adapter, after the commit.
 */
const appendFunction = (notify: boolean, keyed: boolean) => `
      -- One round trip per append. The per-stream advisory lock is taken before anything is
      -- written, so a stream's transaction ids (and so its global order) follow its revisions.
      -- That only holds if the transaction gets its id here, after the lock: a transaction that
      -- has written before (and so has an id already) is refused.
      create or replace function toolbus_append(
        p_stream text, p_expected text, p_ids uuid[], p_types text[], p_data text[], p_metadata text[]${keyed ? ', p_keys text[]' : ''})
      returns table (next_revision bigint, commit_position text, prepare_position bigint, written boolean)
      language plpgsql as $fn$
      declare
        cur bigint;
        n int := cardinality(p_ids);
        found_count int;
        found_min bigint;
        found_max bigint;
        found_elsewhere int;
        last_seq bigint;
      begin
        if pg_current_xact_id_if_assigned() is not null then
          raise exception using errcode = 'TB002',
            message = 'toolbus_append must be the first write of its transaction';
        end if;
        perform pg_advisory_xact_lock(hashtextextended('toolbus-stream:' || p_stream, 0));
        select s.revision into cur from toolbus_streams s where s.stream_id = p_stream;
        cur := coalesce(cur, -1);

        select count(*), min(e.revision), max(e.revision), count(*) filter (where e.stream_id <> p_stream)
          into found_count, found_min, found_max, found_elsewhere
          from toolbus_events e where e.event_id = any(p_ids);

        if found_count > 0 then
          -- A retry of an earlier append is a no-op when all of its events are there, in order,
          -- where the expected revision says they would be. Anything else is a conflict.
          if found_count = n and found_elsewhere = 0
             and not exists (
               select 1 from unnest(p_ids) with ordinality as x(id, ord)
               join toolbus_events e on e.event_id = x.id
               where e.revision <> found_min + x.ord - 1)
             and (p_expected in ('any', 'stream_exists')
                  or (p_expected = 'no_stream' and found_min = 0)
                  or (p_expected ~ '^[0-9]+$' and p_expected::bigint = found_min - 1)) then
            return query select found_max, null::text, null::bigint, false;
            return;
          end if;
          raise exception using errcode = 'TB001', message = 'wrong expected revision', detail = cur::text;
        end if;

        if (p_expected = 'no_stream' and cur <> -1)
           or (p_expected = 'stream_exists' and cur = -1)
           or (p_expected ~ '^[0-9]+$' and p_expected::bigint <> cur) then
          raise exception using errcode = 'TB001', message = 'wrong expected revision', detail = cur::text;
        end if;

        with inserted as (
          insert into toolbus_events (stream_id, revision, event_id, event_type, data, metadata${keyed ? ', event_key' : ''})
          select p_stream, cur + x.ord, x.id, x.type, x.data::json, x.metadata::json${keyed ? ', x.key' : ''}
            from unnest(p_ids, p_types, p_data, p_metadata${keyed ? ', p_keys' : ''})
                 with ordinality as x(id, type, data, metadata${keyed ? ', key' : ''}, ord)
           order by x.ord
          returning seq)
        select max(seq) into last_seq from inserted;

        insert into toolbus_streams (stream_id, revision) values (p_stream, cur + n)
          on conflict (stream_id) do update set revision = excluded.revision;
${notify ? "        perform pg_notify('toolbus_events', '');\n" : ''}        return query select cur + n, pg_current_xact_id()::text, last_seq, true;
      end
      $fn$;
`;

/**
 * Group commit (docs/decisions/0028-group-commit.md): the appends of several streams in one
 * transaction, one commit. Per member it does what `toolbus_append` does (expected revision,
 * idempotent retry, insert, the stream's revision) but a conflict is a row, not an exception, so
 * the other members still commit. Every stream lock is taken first, in the order of the lock keys
 * (no two batches wait for each other in a cycle), and before the first write: the transaction
 * gets its id after all of its locks, so each stream's positions still follow its revisions (0001).
 * Members are `p_streams[i]` with `p_counts[i]` events, flattened in member order in the other
 * arrays. The caller never puts one stream in twice.
 */
const appendBatchFunction = `
      create function toolbus_append_batch(
        p_streams text[], p_expected text[], p_counts int[],
        p_ids uuid[], p_types text[], p_data text[], p_metadata text[], p_keys text[])
      returns table (member int, next_revision bigint, commit_position text, prepare_position bigint,
                     written boolean, conflict boolean)
      language plpgsql as $fn$
      declare
        lock_key bigint;
        i int;
        lo int := 1;
        hi int;
        n int;
        stream text;
        expected text;
        ids uuid[];
        cur bigint;
        found_count int;
        found_min bigint;
        found_max bigint;
        found_elsewhere int;
        last_seq bigint;
      begin
        if pg_current_xact_id_if_assigned() is not null then
          raise exception using errcode = 'TB002',
            message = 'toolbus_append_batch must be the first write of its transaction';
        end if;
        for lock_key in
          select distinct hashtextextended('toolbus-stream:' || s, 0) from unnest(p_streams) s order by 1
        loop
          perform pg_advisory_xact_lock(lock_key);
        end loop;

        for i in 1 .. cardinality(p_streams) loop
          stream := p_streams[i];
          expected := p_expected[i];
          n := p_counts[i];
          hi := lo + n - 1;
          ids := p_ids[lo:hi];
          select s.revision into cur from toolbus_streams s where s.stream_id = stream;
          cur := coalesce(cur, -1);

          select count(*), min(e.revision), max(e.revision), count(*) filter (where e.stream_id <> stream)
            into found_count, found_min, found_max, found_elsewhere
            from toolbus_events e where e.event_id = any(ids);

          if found_count > 0 then
            -- The retry rule of toolbus_append, member by member.
            if found_count = n and found_elsewhere = 0
               and not exists (
                 select 1 from unnest(ids) with ordinality as x(id, ord)
                 join toolbus_events e on e.event_id = x.id
                 where e.revision <> found_min + x.ord - 1)
               and (expected in ('any', 'stream_exists')
                    or (expected = 'no_stream' and found_min = 0)
                    or (expected ~ '^[0-9]+$' and expected::bigint = found_min - 1)) then
              return query select i, found_max, null::text, null::bigint, false, false;
            else
              return query select i, cur, null::text, null::bigint, false, true;
            end if;
          elsif (expected = 'no_stream' and cur <> -1)
             or (expected = 'stream_exists' and cur = -1)
             or (expected ~ '^[0-9]+$' and expected::bigint <> cur) then
            return query select i, cur, null::text, null::bigint, false, true;
          else
            with inserted as (
              insert into toolbus_events (stream_id, revision, event_id, event_type, data, metadata, event_key)
              select stream, cur + x.ord, x.id, x.type, x.data::json, x.metadata::json, x.key
                from unnest(ids, p_types[lo:hi], p_data[lo:hi], p_metadata[lo:hi], p_keys[lo:hi])
                     with ordinality as x(id, type, data, metadata, key, ord)
               order by x.ord
              returning seq)
            select max(seq) into last_seq from inserted;

            insert into toolbus_streams (stream_id, revision) values (stream, cur + n)
              on conflict (stream_id) do update set revision = excluded.revision;
            return query select i, cur + n, pg_current_xact_id()::text, last_seq, true, false;
          end if;
          lo := hi + 1;
        end loop;
      end
      $fn$;
`;

/**
 * The PostgreSQL event store. Global order is (tx_id, seq): the writing transaction's id, then the
 * row's sequence. Readers only read rows whose transaction is older than the oldest one still
 * running (`pg_snapshot_xmin`), so a row can never appear behind a reader's cursor later: see
 * docs/decisions/0001-postgres-global-order.md.
 */
export const eventStoreMigrations: Migration[] = [
  {
    version: 1,
    name: 'events, streams and the append function',
    sql: `
      create table toolbus_events (
        seq bigint generated always as identity primary key,
        tx_id xid8 not null default pg_current_xact_id(),
        stream_id text not null,
        revision bigint not null,
        event_id uuid not null,
        event_type text not null,
        data json not null,
        metadata json not null,
        created_at timestamptz not null default clock_timestamp(),
        constraint toolbus_events_stream_revision unique (stream_id, revision),
        constraint toolbus_events_event_id unique (event_id)
      );
      create index toolbus_events_global on toolbus_events (tx_id, seq);

      create table toolbus_streams (
        stream_id text primary key,
        revision bigint not null
      );

      ${appendFunction(true, false)}
    `,
  },
  {
    version: 2,
    name: 'append without pg_notify (the adapter notifies after the commit)',
    sql: appendFunction(false, false),
  },
  {
    // The key (the execution id, for Toolbus) is a column written by the append's own INSERT, so
    // the index is never behind the events. Rows written before take the only key Toolbus ever
    // meant, the metadata's executionId (when it fits a key); rows of other writers keep none.
    // The old six-argument function is dropped: an instance that still calls it would write rows
    // without a key, invisible to readByKey, so it fails instead (stop old instances first).
    version: 3,
    name: 'event keys: a column written by the append, an index on (stream, key), old rows backfilled',
    sql: `
      alter table toolbus_events add column event_key text;
      update toolbus_events set event_key = metadata->>'executionId'
       where json_typeof(metadata) = 'object'
         and metadata->>'executionId' ~ '^[^[:space:][:cntrl:]]{1,128}$';
      create index toolbus_events_stream_key on toolbus_events (stream_id, event_key, revision)
       where event_key is not null;
      drop function toolbus_append(text, text, uuid[], text[], text[], text[]);
      ${appendFunction(false, true)}
    `,
  },
  {
    // Added beside toolbus_append, which stays: a lone append still goes through it, and an
    // instance of the previous version keeps working during a rolling upgrade.
    version: 4,
    name: 'group commit: toolbus_append_batch, the appends of several streams in one transaction',
    sql: appendBatchFunction,
  },
  {
    // PL/pgSQL keeps each statement's plan for the session. A plan made while the events table
    // was still small (a fresh store, before autovacuum's first ANALYZE) scanned the whole table
    // to find an append's event ids, and kept doing so as the table grew: a store filled at 1,500
    // events a second paid a scan per append, growing by the second, until an ANALYZE replaced
    // the plan. Every lookup in the two functions has an index; with sequential scans off inside
    // them, their plans use it whatever the statistics say.
    version: 5,
    name: 'append functions plan their lookups on the indexes, whatever the table statistics say',
    sql: `
      alter function toolbus_append(text, text, uuid[], text[], text[], text[], text[]) set enable_seqscan = off;
      alter function toolbus_append_batch(text[], text[], int[], uuid[], text[], text[], text[], text[]) set enable_seqscan = off;
    `,
  },
];
