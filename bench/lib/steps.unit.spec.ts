import diagnosticsChannel from 'node:diagnostics_channel';
import t from 'tap';
import { afterWarmup, outsideP50, spanP50, StepRecorder, stepKey } from './steps.ts';

t.test('the recorder keeps the first mark of each step, only while recording', async (t) => {
  const channel = diagnosticsChannel.channel('toolbus:test:steps');
  const r = new StepRecorder([channel]);
  channel.publish({ userId: 'u', requestId: 'early', step: 'sent', at: 1 });
  r.start();
  t.ok(channel.hasSubscribers, 'subscribed while recording');
  channel.publish({ userId: 'u', requestId: 'r1', step: 'sent', at: 10 });
  channel.publish({ userId: 'u', requestId: 'r1', step: 'sent', at: 12 });
  r.mark(stepKey('u', 'r1'), 'resolved', 20);
  const marks = r.take();
  t.strictSame(marks, { 'u/r1': { sent: 10, resolved: 20 } }, 'a retried step keeps its first mark');
  t.notOk(channel.hasSubscribers, 'unsubscribed once taken');
  r.mark('u/r2', 'sent', 30);
  t.strictSame(r.take(), {}, 'nothing recorded after');
});

t.test('p50 of a step, per request differences, warm-up cut', async (t) => {
  const client = {
    a: { fired: 0, resolved: 10 },
    b: { fired: 100, resolved: 104 },
    c: { fired: 200, resolved: 206 },
    d: { fired: 300 }, // never answered: left out
  };
  const server = {
    a: { received: 50, answered: 52 },
    b: { received: 7, answered: 10 },
    c: { received: 1, answered: 2 },
  };
  t.equal(spanP50([client], 'fired', 'resolved'), 6);
  t.equal(spanP50([client], 'fired', 'nothing'), null, 'no request with both marks');
  // Outside: a 10 - 2 = 8, b 4 - 3 = 1, c 6 - 1 = 5, whatever each process's clock origin.
  t.equal(outsideP50(client, server, ['fired', 'resolved'], ['received', 'answered']), 5);
  t.strictSame(Object.keys(afterWarmup(client, 'fired', 100)), ['b', 'c', 'd']);
  t.strictSame(afterWarmup({}, 'fired', 100), {});
});
