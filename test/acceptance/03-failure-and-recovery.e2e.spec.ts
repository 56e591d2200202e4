/**
 * Scenario 3 — a failing tool, and recovery.
 *
 * Proves, against the running stack: when a tool throws, returns output that breaks its contract,
 * gets bad arguments or hangs past its timeout, the failure is recorded (ToolRequested,
 * ToolExecuting, ToolFailed with the typed code and the tool's message), notified to the user's
 * socket as `tool_failed`, answered to the agent once with that code, and visible in the read
 * models; a retry of the same request id gets the same failure without running again; and the very
 * next request of the same user succeeds (a failure leaves no stuck slot or broken state behind).
 */
import t from 'tap';
import type { JsonObject } from '../../contracts/index.ts';
import { subscribe } from '../../services/notifier/test-client.ts';
import { startTestStack } from '../support/stack.ts';
import {
  dbPool,
  eventsOf,
  http,
  newUserId,
  projectorCaughtUp,
  terminal,
  typesOf,
  userEvents,
} from './support.ts';

const s = await startTestStack(t);
const pool = dbPool(t, s);
const userId = newUserId('recover');
const token = await s.token(userId);
const socket = await subscribe(s.url('notifier'), token);
t.teardown(() => socket.ws.close());

const failures: Array<{
  name: string;
  tool: string;
  args: JsonObject;
  code: string;
  message: RegExp;
  ran: boolean;
}> = [
  {
    name: 'a tool that throws',
    tool: 'fail',
    args: { message: 'disk quota exceeded on /data' },
    code: 'TOOL_ERROR',
    message: /disk quota exceeded on \/data/,
    ran: true,
  },
  {
    name: 'a flaky tool failing',
    tool: 'flaky',
    args: { fail: true },
    code: 'TOOL_ERROR',
    message: /flaky failed/,
    ran: true,
  },
  {
    name: 'output breaking the contract',
    tool: 'bad_output',
    args: {},
    code: 'OUTPUT_INVALID',
    message: /schema/,
    ran: true,
  },
  {
    name: 'arguments breaking the contract',
    tool: 'sleep',
    args: { ms: 'soon' },
    code: 'VALIDATION',
    message: /ms/,
    ran: false,
  },
  {
    name: 'a tool that hangs past its timeout',
    tool: 'hang',
    args: {},
    code: 'TIMEOUT',
    message: /./,
    ran: true,
  },
];

const executions: Array<{ code: string; executionId: string; ran: boolean }> = [];

for (const f of failures) {
  t.test(`${f.name}: recorded, notified, answered; the next request succeeds`, async (t) => {
    const requestId = `req-${f.tool}-${Date.now()}`;
    const answer = terminal(await s.agent.execute(f.tool, f.args, { token, requestId }));
    t.equal(answer.status, 'failed', 'the agent is told it failed');
    if (answer.status !== 'failed') return;
    t.equal(answer.error.code, f.code, `with code ${f.code}`);
    t.match(answer.error.message, f.message, 'and a reason');
    t.equal(answer.requestId, requestId);
    const executionId = answer.executionId!;
    executions.push({ code: f.code, executionId, ran: f.ran });

    const stored = eventsOf(await userEvents(s.store, userId), executionId);
    t.same(
      typesOf(stored),
      ['ToolRequested', 'ToolExecuting', 'ToolFailed'],
      'recorded: requested, executing, failed',
    );
    const failed = stored[2]!.event;
    t.equal(
      failed.type === 'ToolFailed' ? failed.data.error.code : null,
      f.code,
      'the stored failure has the code',
    );
    t.match(failed.type === 'ToolFailed' ? failed.data.error.message : '', f.message, 'and the message');

    await socket.waitFor(`tool_failed for ${f.tool}`, () =>
      socket.events().some((n) => n.name === 'tool_failed' && n.event.metadata.executionId === executionId),
    );
    const note = socket
      .events()
      .find((n) => n.name === 'tool_failed' && n.event.metadata.executionId === executionId)!;
    t.equal(note.event.id, failed.id, 'the socket was notified of the stored failure');

    const retry = terminal(await s.agent.execute(f.tool, f.args, { token, requestId }));
    t.same(retry, answer, 'a retry of the same request id gets the same answer');
    t.equal(eventsOf(await userEvents(s.store, userId), executionId).length, 3, 'and runs nothing again');

    const next = terminal(await s.agent.execute('flaky', { fail: false }, { token }));
    t.equal(next.status, 'completed', 'the next request of the same user succeeds');
    t.same(next.status === 'completed' ? next.result : null, { ok: true });
  });
}

t.test('the read models show each failure and each recovery', async (t) => {
  const check = await projectorCaughtUp(s, pool);
  t.ok(
    check.equal,
    `the read models equal a replay of the store ${check.differences.slice(0, 3).join('; ')}`,
  );
  for (const e of executions) {
    const row = await http<{ status: string; error: { code: string } | null }>(
      `${s.url('projector')}/executions/${e.executionId}`,
      { token },
    );
    t.equal(row.status, 200);
    t.equal(row.body.status, 'failed', `execution ${e.code} shows as failed`);
    t.equal(row.body.error?.code, e.code, 'with its code');
  }
  const activity = await http<{ executions: number; completed: number; failed: number; refused: number }>(
    `${s.url('projector')}/users/${userId}/activity`,
    { token },
  );
  t.equal(
    activity.body.executions,
    failures.length * 2,
    'every execution is counted once (retries are not new ones)',
  );
  t.equal(activity.body.completed, failures.length, 'one recovery after each failure');
  t.equal(
    activity.body.failed + activity.body.refused,
    failures.length,
    'every failure counted, as failed or refused',
  );
  const metrics = await http<{
    tools: Array<{ tool: string; completed: number; failed: number; errorRate: number }>;
  }>(`${s.url('projector')}/tools/metrics?tool=flaky`, { token });
  const flaky = metrics.body.tools.find((m) => m.tool === 'flaky');
  t.equal(flaky?.completed, failures.length, 'flaky completed after every failure');
  t.equal(flaky?.failed, 1, 'and failed once');
  t.equal(flaky?.errorRate, 1 / (failures.length + 1), 'error rate = failed / (completed + failed)');
});
