import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { createAgentClient } from '../../lib/clients/agent.ts';
import { connectNats } from '../../lib/nats.ts';
import type { Stack } from '../../scripts/launcher.ts';
import { pollUntil } from '../support/processes.ts';
import { checkNothingLost } from './checker.ts';
import { metric, startFaultStack, waitUntil, type FaultStack, type Tap } from './harness.ts';
import {
  faultImpact,
  Ledger,
  measureResume,
  startLoad,
  startOpenLoad,
  type RequestSpec,
  type ResumeGap,
} from './load.ts';
import { makeUsers } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Toolbus on a 3-node NATS JetStream cluster, the intake stream replicated on all three (R3), with
 * two dispatchers, two projectors (one active, one standing by) and two notifiers, under an
 * open-loop load. One fault after another, each under the load: the intake stream's leader node
 * SIGKILLed (and started again), a dispatcher SIGKILLed, the active projector SIGKILLed, one NATS
 * node partitioned (its routes and its clients' connections black-holed) and healed. After each,
 * answers must come again (the gap from the fault to the first answer to a request sent after it
 * is reported, not bounded: the bound is the benchmark's); at the end the checker finds nothing
 * lost, nothing run twice, nothing stuck, and every WebSocket client got every event.
 *
 * The load: first a closed-loop probe (64 requests kept in flight for a few seconds) measures
 * what this stack answers per second on this machine now; the open loop then offers 60 % of that
 * (CLUSTER_FAULT_RATE overrides it), above half of what the stack sustains.
 */

// Seven service processes and three nats-servers start, then four faults each wait for the cluster
// to heal: on a busy CI machine that takes longer than tap's usual 180 s per file.
t.setTimeout(480_000);

/** Mostly quick tools, some slow ones (so that a kill lands mid-tool), failures, a cached one. */
const mix = (i: number, rand: () => number): RequestSpec => {
  const r = rand();
  if (r < 0.4) return { tool: 'echo', args: { i } };
  if (r < 0.7) return { tool: 'noop', args: {} };
  if (r < 0.85) return { tool: 'sleep_idempotent', args: { ms: 50 + Math.floor(rand() * 250) } };
  if (r < 0.9) return { tool: 'sleep', args: { ms: 50 + Math.floor(rand() * 250) } };
  if (r < 0.95) return { tool: 'fail', args: { message: `planned failure ${i}` } };
  return { tool: 'cached_echo', args: { k: Math.floor(rand() * 3) } };
};

/** Which of the two projector processes holds the projection lock. */
async function activeProjector(stacks: Stack[]): Promise<Stack | undefined> {
  for (const s of stacks) {
    const p = s.services.projector;
    if (p.process() && (await metric(p.url, 'toolbus_projector_active').catch(() => 0)) === 1) return s;
  }
  return undefined;
}

t.test(
  'a 3-node NATS cluster with two of every service rides out node, service and network faults',
  async (t) => {
    const fs: FaultStack = await startFaultStack(t, {
      natsCluster: 3,
      env: {
        USER_CONCURRENCY: '100',
        RATE_LIMIT_PER_SEC: '10000',
        RATE_LIMIT_BURST: '10000',
        // What a dead dispatcher (or one cut off with its node) held comes back to the other soon.
        ACK_WAIT_MS: '5000',
        PROJECTOR_LOCK_POLL_MS: '250',
        LOG_LEVEL: 'warn',
      },
    });
    const cluster = fs.cluster!;
    await fs.extra('dispatcher');
    const projector2 = await fs.extra('projector');
    const notifier2 = await fs.extra('notifier');
    const projectors = [fs.stack, projector2];

    const users = await makeUsers(fs, 'cl', 8);
    const watchers = [
      ...startWatchers(fs.url('notifier'), users.slice(0, 4)),
      ...startWatchers(notifier2.services.notifier.url, users.slice(4)),
    ];
    t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
    // Three agents, each its own connection to some node of the cluster.
    const agents = await Promise.all(
      [1, 2, 3].map(async (i) => {
        const nc = await connectNats(cluster.url, `cluster-agent-${i}`, {
          nkeySeed: cluster.identities.agent.seed,
        });
        t.teardown(() => nc.close());
        return createAgentClient(nc);
      }),
    );
    const ledger = new Ledger();

    // What this stack answers per second now, with 64 requests kept in flight.
    const probe = startLoad({
      agent: fs.agent,
      ledger,
      users,
      concurrency: 8,
      seed: 90,
      mix,
      pauseMs: 0,
      prefix: 'p',
    });
    await probe.answersAfter(50, 90_000);
    const before = probe.answered;
    const probeStart = Date.now();
    await sleep(5_000);
    const capacity = ((probe.answered - before) * 1000) / (Date.now() - probeStart);
    await probe.stop();
    const rate = Number(process.env['CLUSTER_FAULT_RATE'] ?? Math.max(10, Math.round(capacity * 0.6)));
    t.comment(
      `closed-loop probe: ${capacity.toFixed(0)} answers/s with 64 in flight; open loop offers ${rate}/s`,
    );

    const load = startOpenLoad({
      agents,
      ledger,
      users,
      ratePerSec: rate,
      seed: 91,
      mix,
      send: { attemptTimeoutMs: 10_000 },
    });
    await load.answersAfter(rate * 2, 90_000);
    const gaps: Array<[string, ResumeGap]> = [];

    /** Makes the fault, waits until answers come again, reports the gap. */
    const fault = async (t: Tap, name: string, make: () => Promise<void> | void): Promise<ResumeGap> => {
      const faultAt = Date.now();
      await make();
      const gap = await measureResume(ledger, faultAt, 120_000);
      gaps.push([name, gap]);
      t.comment(`${name}: answers resumed ${gap.resumedAfterMs} ms after the fault`);
      t.pass(`answers resume after: ${name}`);
      return gap;
    };

    await t.test('the node leading the intake stream is killed, then started again', async (t) => {
      const leader = await pollUntil('an intake leader', () => cluster.streamLeader());
      await fault(t, `SIGKILL of NATS node ${leader.name} (intake leader)`, () => leader.kill());
      const next = await pollUntil('another leader', async () => {
        const l = await cluster.streamLeader();
        return l && l !== leader ? l : undefined;
      });
      t.not(next.name, leader.name, `${next.name} leads the intake now`);
      await leader.start();
      await waitUntil(
        `${leader.name} to hold a current copy again`,
        () => cluster.streamWhole(),
        120_000,
        250,
      );
    });

    await t.test('a dispatcher is killed', async (t) => {
      await fault(t, 'SIGKILL of a dispatcher', async () => {
        await fs.stack.kill('dispatcher');
        fs.expectExit('dispatcher');
      });
      await fs.stack.start('dispatcher');
    });

    await t.test('the active projector is killed; the standby takes over', async (t) => {
      const active = await pollUntil('an active projector', () => activeProjector(projectors));
      const standby = projectors.find((s) => s !== active)!;
      const killedAt = Date.now();
      await fault(t, 'SIGKILL of the active projector', async () => {
        await active.kill('projector');
        fs.expectExit('projector');
      });
      await waitUntil(
        'the standby to take over',
        async () => (await activeProjector([standby])) === standby,
        60_000,
        100,
      );
      t.comment(`the standby projector took over ${Date.now() - killedAt} ms after the kill (or less)`);
      await active.start('projector');
    });

    await t.test('a NATS node is partitioned, then healed', async (t) => {
      // The leader's node: the partition must move the intake's leadership, as a real one would.
      const node = await pollUntil('an intake leader', () => cluster.streamLeader());
      await fault(t, `partition of NATS node ${node.name} (intake leader)`, () => node.partition());
      await pollUntil('a leader on the other side', async () => {
        const l = await cluster.streamLeader();
        return l && l !== node ? l : undefined;
      });
      // Long enough for clients on the cut-off node to notice (pings) and move.
      await sleep(10_000);
      node.heal();
      // nats-server 2.9 has left a healed node's copy of the stream behind for minutes (once in CI:
      // not current 120 s after the heal). What this test asserts is that answers resume and nothing
      // is lost; a node that does not catch up is restarted, as an operator would, and said so.
      const whole = await waitUntil(
        `${node.name} to hold a current copy again`,
        () => cluster.streamWhole(),
        120_000,
        250,
      ).then(
        () => true,
        () => false,
      );
      if (!whole) {
        t.comment(`${node.name} held no current copy 120 s after the heal: restarted`);
        await node.kill();
        await node.start();
        await waitUntil(
          `${node.name} to hold a current copy after its restart`,
          () => cluster.streamWhole(),
          120_000,
          250,
        );
      }
    });

    await load.answersAfter(rate * 2, 90_000);
    await load.stop();
    t.equal(load.skipped, 0, 'the generator sent every request its schedule asked for');
    for (const [name, gap] of gaps) {
      const impact = faultImpact(ledger, gap.faultAt, 2_000);
      t.comment(
        `${name}: resumed after ${gap.resumedAfterMs} ms; of the ${impact.sent} requests sent in the 2 s after it ` +
          `the slowest was answered in ${impact.slowestMs} ms (${impact.slowest?.tool}, ${impact.slowest?.attempts} attempt(s))`,
      );
    }
    t.comment(`requests: ${JSON.stringify(ledger.summary())}`);

    await checkNothingLost(t, { store: fs.store, pool: fs.pool, ledger, watchers });
    t.strictSame(fs.unexpectedExits(), [], 'no service process ended on its own');
  },
);
