/**
 * What answer lookups (`toolbus.answers.<user>`) cost the dispatches beside them. Agents look up a
 * request whose retry JetStream dropped as a duplicate; under overload, agents that time out and
 * retry elsewhere make many of them, each for a request still queued (the store has nothing for
 * it yet: the lookup's most expensive case). One dispatcher, one open loop of dispatches at
 * `rate`, and in turn segments without lookups and with `lookups` per second of such lookups
 * beside them (open loop too, each with a 2 s timeout, as the agent client's documented bound).
 * Prints, for each segment, the dispatches answered per second and their p50/p99, and the lookups'
 * outcomes: answered, refused OVERLOADED, or no reply in 2 s.
 *
 *   npx tsx bench/lookup-storm.ts [rate=100] [lookups=400] [rounds=2] [segmentS=8]
 *
 * DISPATCHER_* variables in the environment go to the dispatcher (DISPATCHER_MAX_LOOKUPS=4, say).
 */
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { REQUEST_HEADERS, subjects } from '../contracts/index.ts';
import { signToken } from '../lib/auth.ts';
import { connectNats, connectionIdentity } from '../lib/nats.ts';
import { BenchContext, cpuUs, QUICK } from './lib/context.ts';
import { decodeHistogram, summarize } from './lib/histogram.ts';
import type { OpenLoopResult } from './lib/openloop.ts';
import { dispatcherEnv, dispatchWorkload } from './suites/dispatch.ts';

const [rateArg, lookupsArg, roundsArg, segmentArg] = process.argv.slice(2);
const rate = Number(rateArg ?? 100);
const lookupRate = Number(lookupsArg ?? 400);
const rounds = Number(roundsArg ?? 2);
const segmentMs = Number(segmentArg ?? 8) * 1000;
const USERS = 50;
const LOOKUP_TIMEOUT_MS = 2_000;

interface StormCounts {
  sent: number;
  answered: number;
  overloaded: number;
  unanswered: number;
}

/** Sends `perS` lookups a second for `ms`, of request ids no one sent, and counts how they ended. */
async function storm(nc: NatsConnection, tokens: string[], perS: number, ms: number): Promise<StormCounts> {
  const counts: StormCounts = { sent: 0, answered: 0, overloaded: 0, unanswered: 0 };
  const pending: Promise<void>[] = [];
  const started = performance.now();
  const agentId = connectionIdentity(nc);
  while (performance.now() - started < ms) {
    const due = Math.floor(((performance.now() - started) / 1000) * perS);
    for (; counts.sent < due; counts.sent++) {
      const k = counts.sent % tokens.length;
      const h = headers();
      h.set(REQUEST_HEADERS.authorization, `Bearer ${tokens[k]}`);
      const body = JSON.stringify({ requestId: `storm-${started.toFixed(0)}-${counts.sent}` });
      pending.push(
        nc
          .request(subjects.answers(`bench-u${k}`, agentId), body, { timeout: LOOKUP_TIMEOUT_MS, headers: h })
          .then(
            (reply) => {
              const value = reply.json<{ overloaded?: unknown }>();
              if (value.overloaded) counts.overloaded++;
              else counts.answered++;
            },
            () => {
              counts.unanswered++;
            },
          ),
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  await Promise.all(pending);
  return counts;
}

/** DISPATCHER_* settings to try, passed on to the dispatcher (DISPATCHER_MAX_LOOKUPS, say). */
const extraEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => k.startsWith('DISPATCHER_')),
) as Record<string, string>;

const ctx = new BenchContext('quick', QUICK);
try {
  await ctx.open();
  const db = await ctx.database();
  const dispatcher = await ctx.service('dispatcher', {
    role: 'dispatcher',
    env: { ...dispatcherEnv(ctx, db.url), ...extraEnv },
  });
  const loadgen = await ctx.fork('loadgen.ts', 'loadgen-toolbus');
  await loadgen.call('setup', dispatchWorkload(ctx));
  const nc = await connectNats(ctx.nats.url, 'bench-lookups');
  const tokens = await Promise.all(
    Array.from({ length: USERS }, (_, k) =>
      signToken(ctx.jwtSecret, { sub: `bench-u${k}`, roles: ['user'] }, '2h'),
    ),
  );
  const segment = async (tag: string, withLookups: boolean) => {
    const c0 = await dispatcher.cpu();
    const run = loadgen.call<OpenLoopResult>(
      'run',
      { rate, durationMs: segmentMs, warmupMs: 0, drainMs: 15_000, maxOutstanding: rate * 30, tag },
      segmentMs + 140_000,
    );
    const lookups = withLookups ? await storm(nc, tokens, lookupRate, segmentMs) : null;
    const r = await run;
    return { r, lookups, cpuUs: cpuUs(c0, await dispatcher.cpu()) };
  };
  await segment(`${ctx.runId}-warm`, false);
  for (let i = 0; i < rounds; i++) {
    for (const withLookups of [false, true]) {
      const {
        r,
        lookups,
        cpuUs: us,
      } = await segment(`${ctx.runId}-${i}-${withLookups ? 'storm' : 'calm'}`, withLookups);
      const l = summarize(decodeHistogram(r.histogram));
      ctx.log(
        `round ${i} ${withLookups ? `with ${lookupRate} lookups/s` : 'without lookups'}: ` +
          `${(r.completed / (segmentMs / 1000)).toFixed(0)}/s answered of ${rate}/s (${r.errors} errors), ` +
          `p50 ${l.p50.toFixed(1)} ms, p99 ${l.p99.toFixed(1)} ms, dispatcher CPU ${(us / segmentMs / 10).toFixed(0)}% of a core` +
          (lookups
            ? `; lookups ${lookups.sent}: ${lookups.answered} answered, ${lookups.overloaded} overloaded, ` +
              `${lookups.unanswered} without a reply in ${LOOKUP_TIMEOUT_MS} ms`
            : ''),
      );
    }
  }
  await nc.drain();
} finally {
  await ctx.close();
}
