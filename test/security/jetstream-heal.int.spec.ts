import { AckPolicy, jetstreamManager, StorageType, type JetStreamManager } from '@nats-io/jetstream';
import t from 'tap';
import { jetstream as names, subjects } from '../../contracts/index.ts';
import { connectNats } from '../../lib/nats.ts';
import type { IntakeState } from '../../services/dispatcher/intake.ts';
import { eventually, harness } from '../../services/dispatcher/test/harness.ts';

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

/**
 * An attacker with JetStream API rights deletes the dispatcher's consumer or its request stream, or
 * tries to purge the stream (refused by the stream itself: deny_purge). The dispatcher recreates what is gone and goes on answering; `/health/ready`
 * says 503, naming the intake, while it does not consume. (This test's NATS has no authorization,
 * so the attacker has the rights; the permissions themselves are tested elsewhere.)
 */
t.test('the intake heals after its stream or consumer is deleted', async (t) => {
  const h = await harness(t);
  const d = await h.start();
  const alice = await h.token('alice');
  const attackerNc = await connectNats(h.nats.url, 'attacker');
  t.teardown(() => attackerNc.close());
  const attacker = await jetstreamManager(attackerNc);

  const states: IntakeState[] = [];
  d.intake.watch((s) => states.push(s));
  const readiness = async () => {
    const res = await d.app.inject({ method: 'GET', url: '/health/ready' });
    return { code: res.statusCode, body: res.json<{ checks: Record<string, string> }>() };
  };
  const ready = () => eventually(async () => (await readiness()).code === 200, 20_000, 'ready');
  let n = 0;
  const answered = async (t: Tap, what: string) => {
    const a = await h.agent.execute(
      'echo',
      { n: ++n },
      { token: alice, requestId: `heal-${n}`, timeoutMs: 30_000 },
    );
    t.match(a, { status: 'completed', result: { n } }, `${what}: a request is answered`);
  };
  const missingLines = (resource: string) =>
    h.logs.lines.filter((l) => l.includes(`"intake ${resource} missing; recreating it"`)).length;
  /** Outages (runs of not consuming) since `states[from]` in which the intake found `missing` gone. */
  const disappearances = (missing: 'stream' | 'consumer', from: number) => {
    let n = 0;
    let counted = false;
    for (const s of states.slice(from)) {
      if (s.consuming) counted = false;
      else if (s.missing === missing && !counted) {
        n++;
        counted = true;
      }
    }
    return n;
  };
  /**
   * The attacker's delete. nats-server may answer a delete of file-stored state that is in use
   * with an error (`unlinkat … directory not empty`) although the consumer or stream is gone: the
   * intake's states tell what happened, not this answer.
   */
  const attackerDelete = (del: () => Promise<unknown>) => del().catch(() => undefined);
  /** Waits until the intake went from not consuming (`missing` gone) back to consuming. */
  const healedFrom = async (missing: 'stream' | 'consumer', from: number) => {
    await eventually(
      () => {
        const down = states.findIndex((s, i) => i >= from && !s.consuming && s.missing === missing);
        return down >= 0 && states.slice(down).some((s) => s.consuming);
      },
      30_000,
      `the intake to notice the ${missing} is gone and consume again`,
    );
  };

  await ready();
  await answered(t, 'before');
  t.match((await readiness()).body.checks, { intake: 'ok' }, 'readiness names the intake');

  t.test('the consumer deleted: recreated, one log line', async (t) => {
    const from = states.length;
    const before = missingLines(`consumer ${names.dispatcherConsumer}`);
    await attackerDelete(() => attacker.consumers.delete(names.requestsStream, names.dispatcherConsumer));
    await healedFrom('consumer', from);
    await ready();
    await answered(t, 'after the consumer was deleted');
    t.equal(
      missingLines(`consumer ${names.dispatcherConsumer}`) - before,
      disappearances('consumer', from),
      'logged once per disappearance',
    );
  });

  t.test('the stream deleted: stream and consumer recreated, one log line', async (t) => {
    const from = states.length;
    const before = missingLines(`stream ${names.requestsStream}`);
    await attackerDelete(() => attacker.streams.delete(names.requestsStream));
    await healedFrom('stream', from);
    await ready();
    await answered(t, 'after the stream was deleted');
    t.equal(
      missingLines(`stream ${names.requestsStream}`) - before,
      disappearances('stream', from),
      'logged once per disappearance',
    );
  });

  t.test('a purge or a message deletion is refused, even with the rights to ask', async (t) => {
    await t.rejects(attacker.streams.purge(names.requestsStream), /purge/i, 'purge refused (deny_purge)');
    await t.rejects(
      attacker.streams.deleteMessage(names.requestsStream, 1),
      /delete/i,
      'message deletion refused (deny_delete)',
    );
    await answered(t, 'after the refused purge');
    await ready();
  });

  /**
   * While something else holds what the dispatcher must recreate, it cannot heal: not ready, with
   * the reason, retrying without a log line per attempt; ready again once the squatter is gone.
   */
  const heldDown = async (
    t: Tap,
    resource: 'stream' | 'consumer',
    unsquat: (jsm: JetStreamManager) => Promise<unknown>,
  ) => {
    const name =
      resource === 'stream' ? `stream ${names.requestsStream}` : `consumer ${names.dispatcherConsumer}`;
    const notReady = await eventually(
      async () => {
        const r = await readiness();
        return r.code === 503 && r.body.checks['intake'] === `${name} missing; recreating` && r;
      },
      30_000,
      'readiness 503 naming the intake',
    );
    t.match(notReady.body, { status: 'not ready', checks: { intake: `${name} missing; recreating` } });
    // From the second attempt on, the first repair has failed and been logged.
    const attemptsAtLeast = (n: number) =>
      eventually(() => !d.intake.state.consuming && d.intake.state.attempts >= n, 30_000, `attempt ${n}`);
    await attemptsAtLeast(2);
    const lines = missingLines(name);
    t.ok(lines >= 1, 'the disappearance is logged');
    await attemptsAtLeast(4);
    t.equal(missingLines(name), lines, 'no log line per retry');
    t.equal((await readiness()).code, 503, 'still not ready');
    await unsquat(attacker);
    await ready();
    t.ok(d.intake.state.consuming, 'consuming again');
    await answered(t, `after the ${resource} came back`);
  };

  /** Deletes `resource` and puts the squatter in its way, again until the squatter gets there first. */
  const squatAfterDeleting = async (deleteIt: () => Promise<unknown>, squat: () => Promise<unknown>) => {
    await eventually(
      async () => {
        await deleteIt().catch(() => undefined);
        return squat().then(
          () => true,
          () => false,
        );
      },
      30_000,
      'the squatter in place',
    );
  };

  t.test('the consumer deleted and its place taken: not ready until it can be recreated', async (t) => {
    // A work-queue stream takes no second consumer on the same subjects.
    const squat = (jsm: JetStreamManager) =>
      jsm.consumers.add(names.requestsStream, {
        durable_name: 'squatter',
        ack_policy: AckPolicy.Explicit,
        filter_subject: subjects.requestsAll,
      });
    const unsquat = (jsm: JetStreamManager) => jsm.consumers.delete(names.requestsStream, 'squatter');
    await squatAfterDeleting(
      () => attacker.consumers.delete(names.requestsStream, names.dispatcherConsumer),
      () => squat(attacker),
    );
    await heldDown(t, 'consumer', unsquat);
  });

  t.test('the stream deleted and its subjects taken: not ready until it can be recreated', async (t) => {
    // No two streams may hold the same subjects.
    const squat = (jsm: JetStreamManager) =>
      jsm.streams.add({ name: 'SQUATTER', subjects: [subjects.requestsAll], storage: StorageType.Memory });
    const unsquat = (jsm: JetStreamManager) => jsm.streams.delete('SQUATTER');
    await squatAfterDeleting(
      () => attacker.streams.delete(names.requestsStream),
      () => squat(attacker),
    );
    await heldDown(t, 'stream', unsquat);
  });
});
