import { jetstream, jetstreamManager, RetentionPolicy, StorageType } from '@nats-io/jetstream';
import { connect, headers, nanos } from '@nats-io/transport-node';
import { jwtVerify } from 'jose';
import { parseToolRequest, userStream, type ToolEvent } from '../../contracts/index.ts';
import { createTokenVerifier, signToken } from '../../lib/auth.ts';
import { createPool } from '../../lib/db.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import { toEventData } from '../../lib/toolEvents.ts';
import type { BenchContext } from '../lib/context.ts';
import { newHistogram, recordMs, summarize } from '../lib/histogram.ts';
import { figure, type BenchResult } from '../lib/report.ts';
import { insertStep, noopExecutionEvents, RAW_EVENTS_DDL, RowFactory } from '../lib/rows.ts';

/**
 * Where a dispatch's time goes: the pieces of the dispatcher's critical path measured one at a
 * time (closed loop, one after the other, no load), each beside the bare operation it wraps. Not
 * a target; it explains the gaps of benchmarks 1, 2 and 6.
 */

async function timeEach(
  n: number,
  fns: Array<() => Promise<unknown>>,
): Promise<ReturnType<typeof summarize>[]> {
  const hs = fns.map(() => newHistogram());
  for (let i = 0; i < n; i++) {
    // Interleaved, so drift on a shared machine hits every variant alike.
    for (let k = 0; k < fns.length; k++) {
      const s = performance.now();
      await fns[k]!();
      recordMs(hs[k]!, performance.now() - s);
    }
  }
  return hs.map(summarize);
}

/** CPU µs per call, after a warm-up. */
async function cpuPerCall(n: number, fn: () => unknown): Promise<number> {
  for (let i = 0; i < Math.min(500, n); i++) await fn();
  const c0 = process.cpuUsage();
  for (let i = 0; i < n; i++) await fn();
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / n;
}

export async function diagnose(ctx: BenchContext, replierSubject: string): Promise<BenchResult> {
  const started = performance.now();
  const n = ctx.mode === 'quick' ? 100 : 500;
  const db = await ctx.database();
  const store = await createPostgresEventStore({ connectionString: db.url });
  const pool = createPool(db.url, { max: 2, application: 'bench-diagnose' });
  const nc = await connect({ servers: ctx.nats.url, name: 'bench-diagnose' });
  try {
    // 1. One execution step: the event store's append (toolbus_append) vs a plain insert of the same rows.
    await pool.query(RAW_EVENTS_DDL);
    const rows = new RowFactory('user-diagnose-raw');
    let prev: string | undefined;
    let revision = -1;
    let i = 0;
    let pendingStep: ToolEvent[] = [];
    let insertSteps = 0;
    const user = 'diagnose';
    const [append, insert] = await timeEach(n, [
      async () => {
        // Alternate the two steps of an execution, as the dispatcher does.
        if (pendingStep.length === 0) {
          const events = noopExecutionEvents(user, `diag-${i++}`, prev);
          prev = events.at(-1)!.metadata.hash;
          await store.append(
            userStream(user),
            events.slice(0, 2).map(toEventData),
            revision < 0 ? 'no_stream' : revision,
          );
          revision += 2;
          pendingStep = events.slice(2);
        } else {
          await store.append(userStream(user), pendingStep.map(toEventData), revision);
          revision += 1;
          pendingStep = [];
        }
      },
      async () => insertStep(pool, rows.step(insertSteps++ % 2 === 0 ? 0 : 1)),
    ]);

    // 2. Appends from 10 connections at once (the event store's pool), as fast as they go: the
    //    store's append as it is (toolbus_append, then one NOTIFY per burst after the commits);
    //    a copy of toolbus_append that notifies inside its transaction, as version 1 did, created
    //    in this database only; and plain inserts of the same rows. A transaction that has called
    //    NOTIFY holds a database-wide lock from its commit's start to its end (WAL flush
    //    included), so appends that notify commit one at a time instead of sharing flushes.
    const { rows: defs } = await pool.query<{ def: string }>(
      `select pg_get_functiondef('toolbus_append'::regproc) as def`,
    );
    const lastStatement = /return query select cur \+ n,/;
    if (!lastStatement.test(defs[0]!.def)) {
      throw new Error('toolbus_append changed: the version-1 copy cannot be made; update this diagnostic');
    }
    await pool.query(
      defs[0]!.def
        .replace(/toolbus_append/g, 'bench_append_notifying')
        .replace(
          lastStatement,
          "perform pg_notify('toolbus_events', '');\n        return query select cur + n,",
        ),
    );
    const concurrentSeconds = ctx.mode === 'quick' ? 1.5 : 5;
    const appender = await createPostgresEventStore({ connectionString: db.url, poolSize: 10 });
    // The same store with group commit off (docs/decisions/0028-group-commit.md): one transaction per append.
    const alone = await createPostgresEventStore({
      connectionString: db.url,
      poolSize: 10,
      groupCommit: false,
    });
    const concurrent = async (
      fn: 'store' | 'alone' | 'bench_append_notifying' | 'insert',
      tag: string,
    ): Promise<number> => {
      const end = performance.now() + concurrentSeconds * 1000;
      let steps = 0;
      await Promise.all(
        Array.from({ length: 10 }, async (_, w) => {
          const streamUser = `c-${tag}-${w}`;
          const raw = new RowFactory(`user-${streamUser}-raw`);
          let rev = -1;
          let prevHash: string | undefined;
          for (let e = 0; performance.now() < end; e++) {
            const execution = noopExecutionEvents(streamUser, `r${e}`, prevHash).map(toEventData);
            prevHash = (execution.at(-1)!.metadata as { hash: string }).hash;
            for (const [k, batch] of [execution.slice(0, 2), execution.slice(2)].entries()) {
              if (fn === 'insert') await insertStep(pool2, raw.step(k === 0 ? 0 : 1));
              else if (fn === 'store' || fn === 'alone') {
                await (fn === 'store' ? appender : alone).append(
                  userStream(streamUser),
                  batch,
                  rev < 0 ? 'no_stream' : rev,
                );
              } else {
                await pool2.query(`select * from ${fn}($1, $2, $3, $4, $5, $6, $7)`, [
                  userStream(streamUser),
                  rev < 0 ? 'no_stream' : String(rev),
                  batch.map((x) => x.id),
                  batch.map((x) => x.type),
                  batch.map((x) => JSON.stringify(x.data)),
                  batch.map((x) => JSON.stringify(x.metadata)),
                  batch.map((x) => x.key ?? null),
                ]);
              }
              rev += batch.length;
              steps++;
            }
          }
        }),
      );
      return steps / concurrentSeconds;
    };
    const pool2 = createPool(db.url, { max: 10, application: 'bench-diagnose-concurrent' });
    const best = { append: 0, alone: 0, notifying: 0, insert: 0 };
    try {
      for (let round = 0; round < (ctx.mode === 'quick' ? 1 : 2); round++) {
        best.append = Math.max(best.append, await concurrent('store', `a${round}`));
        best.alone = Math.max(best.alone, await concurrent('alone', `s${round}`));
        best.notifying = Math.max(best.notifying, await concurrent('bench_append_notifying', `q${round}`));
        best.insert = Math.max(best.insert, await concurrent('insert', `i${round}`));
      }
    } finally {
      await pool2.end();
      await appender.close();
      await alone.close();
    }

    // 3. The request's way in: a JetStream publish with a dedup id, acked after the file store
    //    has it (as the agent client sends it), vs a core NATS request/reply to a bare replier.
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({
      name: 'BENCH_DIAGNOSE',
      subjects: ['bench.diagnose.>'],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      duplicate_window: nanos(120_000),
    });
    const js = jetstream(nc);
    const body = JSON.stringify({
      requestId: 'bench-0000000000',
      tool: 'noop',
      args: {},
      replyTo: '_INBOX.ABCDEFGHIJKLMNOPQRSTUV',
    });
    const h = headers();
    h.set('Authorization', 'Bearer x');
    let k = 0;
    const [jsPublish, request] = await timeEach(n, [
      () => js.publish('bench.diagnose.u', body, { msgID: `u:${k++}`, headers: h }),
      () => nc.request(replierSubject, body, { timeout: 10_000 }),
    ]);
    await jsm.streams.delete('BENCH_DIAGNOSE');

    // 4. CPU of the per-request work in the dispatcher's process, beside the bare operation.
    const token = await signToken(ctx.jwtSecret, { sub: 'u1', roles: ['user'] });
    const verifier = createTokenVerifier({ secret: ctx.jwtSecret, maxLifetimeS: 86_400, clockToleranceS: 5 });
    const cryptoKey = await crypto.subtle.importKey(
      'raw',
      new TextEncoder().encode(ctx.jwtSecret),
      { name: 'HMAC', hash: 'SHA-256' },
      false,
      ['verify'],
    );
    const calls = ctx.mode === 'quick' ? 1_000 : 5_000;
    const verify = await cpuPerCall(calls, () => verifier.verify(`Bearer ${token}`));
    const verifyImported = await cpuPerCall(calls, () =>
      jwtVerify(token, cryptoKey, { algorithms: ['HS256'], requiredClaims: ['sub', 'exp'] }),
    );
    const bytes = new TextEncoder().encode(body);
    const parse = await cpuPerCall(calls, () => parseToolRequest(bytes));
    const jsonParse = await cpuPerCall(calls, () => JSON.parse(new TextDecoder().decode(bytes)));
    const events = noopExecutionEvents('u1', 'r1');
    const validate = await cpuPerCall(calls, () => events.map(toEventData));
    const stringify = await cpuPerCall(calls, () => events.map((e) => JSON.stringify(e)));

    ctx.log(
      `diagnostics: append p50 ${append!.p50} ms vs insert ${insert!.p50} ms; 10 connections: ${best.append.toFixed(0)} appends/s, ` +
        `${best.alone.toFixed(0)} without group commit, ` +
        `${best.notifying.toFixed(0)} notifying inside the transaction (version 1), ${best.insert.toFixed(0)} inserts/s; JetStream publish p50 ${jsPublish!.p50} ms vs request ${request!.p50} ms; ` +
        `verify ${verify.toFixed(0)} µs vs ${verifyImported.toFixed(0)} µs; parse ${parse.toFixed(0)} µs vs ${jsonParse.toFixed(0)} µs; toEventData×3 ${validate.toFixed(0)} µs vs ${stringify.toFixed(0)} µs`,
    );
    return {
      id: 'diagnostics',
      title: '7. Where dispatch time goes (diagnostics, no target)',
      figures: [
        figure('event store append of one step, p50', 'ms', append!.p50, {
          name: 'plain insert of the same rows',
          value: insert!.p50,
        }),
        figure('event store append of one step, p99', 'ms', append!.p99, {
          name: 'plain insert of the same rows',
          value: insert!.p99,
        }),
        figure('appends per second, 10 connections at once', 'steps/s', best.append, {
          name: 'the same appends with group commit off, one transaction each',
          value: best.alone,
        }),
        figure('appends per second, 10 connections at once', 'steps/s', best.append, {
          name: 'the same appends notifying inside their transaction (version 1)',
          value: best.notifying,
        }),
        figure('appends per second, 10 connections at once', 'steps/s', best.append, {
          name: 'plain inserts of the same rows',
          value: best.insert,
        }),
        figure('JetStream publish with Nats-Msg-Id, acked, p50', 'ms', jsPublish!.p50, {
          name: 'core NATS request/reply',
          value: request!.p50,
        }),
        figure('token verification (lib/auth.ts), CPU per call', 'µs', verify, {
          name: 'jwtVerify with the key imported once',
          value: verifyImported,
        }),
        figure('parseToolRequest, CPU per call', 'µs', parse, {
          name: 'JSON.parse of the same bytes',
          value: jsonParse,
        }),
        figure("toEventData of an execution's 3 events, CPU", 'µs', validate, {
          name: 'JSON.stringify of the same events',
          value: stringify,
        }),
      ],
      targets: [],
      notes: [
        `Closed loop, one operation at a time (${n} of each, interleaved), on an otherwise idle run: the cost of each piece, not its cost under load.`,
        `Appends per second: 10 connections (the event store's pool) appending execution steps as fast as they can for ${concurrentSeconds} s, to 10 streams; best of ` +
          `${ctx.mode === 'quick' ? 1 : 2} round(s). The store appends with group commit (appends of the 10 streams made while earlier commits are in flight share one transaction, toolbus_append_batch) and sends one NOTIFY per burst after the commits; "group commit off" is the same store committing each append in its own transaction (toolbus_append); "notifying inside their transaction" is a copy of toolbus_append, made in the bench's database, that calls pg_notify before it returns, as version 1 of the function did. ` +
          'A transaction that called NOTIFY takes a database-wide lock at commit and keeps it until the commit is flushed, so such commits cannot share a WAL flush.',
        "A dispatch makes 2 appends on its critical path (plus a Redis script and a JetStream publish before it), and verifies a token, parses a request and validates 3 events in the dispatcher's process.",
      ],
      details: {
        append,
        insert,
        concurrentStepsPerSecond: best,
        jsPublish,
        request,
        cpuUs: { verify, verifyImported, parse, jsonParse, validate, stringify },
      },
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await nc.drain().catch(() => undefined);
    await store.close().catch(() => undefined);
    await pool.end().catch(() => undefined);
  }
}
