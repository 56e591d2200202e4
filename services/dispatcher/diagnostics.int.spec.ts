import diagnosticsChannel from 'node:diagnostics_channel';
import t from 'tap';
import { agentSteps, dispatcherSteps, type StepMark } from '../../lib/diagnostics.ts';
import { harness } from './test/harness.ts';

t.test('a subscriber to the diagnostics channels sees each step of a dispatch, in order', async (t) => {
  const h = await harness(t);
  await h.start();
  const marks: Array<StepMark<string> & { channel: string }> = [];
  const onDispatcher = (m: unknown) => marks.push({ ...(m as StepMark<string>), channel: 'dispatcher' });
  const onAgent = (m: unknown) => marks.push({ ...(m as StepMark<string>), channel: 'agent' });
  diagnosticsChannel.subscribe(dispatcherSteps.name, onDispatcher);
  diagnosticsChannel.subscribe(agentSteps.name, onAgent);
  t.teardown(() => {
    diagnosticsChannel.unsubscribe(dispatcherSteps.name, onDispatcher);
    diagnosticsChannel.unsubscribe(agentSteps.name, onAgent);
  });

  const [alice, bob] = [await h.token('alice'), await h.token('bob')];
  const answers = await Promise.all([
    h.agent.execute('echo', { text: 'a', n: 1 }, { token: alice, requestId: 'steps-1' }),
    h.agent.execute('echo', { text: 'b', n: 1 }, { token: bob, requestId: 'steps-1' }),
  ]);
  t.strictSame(
    answers.map((a) => a.status),
    ['completed', 'completed'],
  );

  for (const userId of ['alice', 'bob']) {
    const of = (channel: string) =>
      marks.filter((m) => m.channel === channel && m.userId === userId && m.requestId === 'steps-1');
    const dispatcher = of('dispatcher');
    t.strictSame(
      dispatcher.map((m) => m.step),
      ['received', 'admitted', 'recorded', 'ran', 'completed', 'answered'],
      `${userId}: the dispatcher's steps, once each and in order`,
    );
    t.ok(
      dispatcher.every((m, i) => i === 0 || m.at >= dispatcher[i - 1]!.at),
      `${userId}: each step marked no earlier than the one before`,
    );
    t.strictSame(
      of('agent').map((m) => m.step),
      ['sent', 'stored'],
      `${userId}: the agent client's publish and its acknowledgement`,
    );
  }

  // Unsubscribed, nothing is published (not even built): count the channels' publishes.
  diagnosticsChannel.unsubscribe(dispatcherSteps.name, onDispatcher);
  diagnosticsChannel.unsubscribe(agentSteps.name, onAgent);
  let published = 0;
  for (const channel of [dispatcherSteps, agentSteps]) {
    const publish = channel.publish.bind(channel);
    channel.publish = (m: unknown) => {
      published++;
      publish(m);
    };
    t.teardown(() => {
      channel.publish = publish;
    });
  }
  await h.agent.execute('echo', { text: 'c', n: 1 }, { token: alice, requestId: 'steps-2' });
  t.equal(published, 0, 'no marks are published once no one listens');
  t.notOk(dispatcherSteps.hasSubscribers, 'the channel has no subscriber left');
});
