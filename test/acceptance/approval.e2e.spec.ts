/**
 * Approval over the real services (each its own process, the stack's NATS authorization): a call
 * that needs an approver waits, recorded in its user's stream; the approvers' HTTP API approves or
 * denies it; a deadline ends it APPROVAL_EXPIRED; a dispatcher killed while it waits loses
 * nothing. Every refusal (wrong role, the requester, another hash, after the deadline, twice,
 * racing a cancel) leaves exactly one end, and the auditor's verification passes on the streams.
 */
import t from 'tap';
import {
  argsHash,
  eventProblem,
  evolve,
  initialState,
  type AgentAnswer,
  type ApprovalsPage,
  type JsonObject,
  type ToolEvent,
} from '../../contracts/index.ts';
import { verifyHistory } from '../../services/auditor/verify.ts';
import { COST_APPROVAL_THRESHOLD } from '../../services/dispatcher/tools/costAnalyzer.ts';
import { eventually } from '../../services/dispatcher/test/harness.ts';
import { readUserEvents } from '../support/events.ts';
import { startTestStack, type TestStack } from '../support/stack.ts';

const WAIT = 120_000;

interface Call {
  requestId: string;
  /** Interim answers as they came. */
  interim: AgentAnswer[];
  answer: Promise<AgentAnswer>;
}

function call(s: TestStack, token: string, tool: string, args: JsonObject, requestId: string): Call {
  const interim: AgentAnswer[] = [];
  const answer = s.agent.execute(tool, args, {
    token,
    requestId,
    timeoutMs: WAIT,
    onProgress: (a) => interim.push(a),
  });
  return { requestId, interim, answer };
}

async function http(
  s: TestStack,
  method: 'GET' | 'POST',
  path: string,
  token: string,
  body?: unknown,
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- JSON read by the assertions
): Promise<{ status: number; body: any }> {
  const res = await fetch(`${s.url('dispatcher')}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, body: await res.json() };
}

async function eventsOf(s: TestStack, userId: string): Promise<ToolEvent[]> {
  return (await readUserEvents(s.store, userId)).map((e) => e.event);
}

const ofExecution = (events: ToolEvent[], executionId: string) =>
  events.filter((e) => e.metadata.executionId === executionId);

/** Every event is legal after the ones before it (the decider's rules read from the events' side). */
function problemsOf(events: ToolEvent[]): string[] {
  const states = new Map<string, ReturnType<typeof initialState>>();
  const problems: string[] = [];
  for (const e of events) {
    const before = states.get(e.metadata.executionId) ?? initialState();
    const problem = eventProblem(before, e);
    if (problem) problems.push(`${e.type} of ${e.metadata.executionId}: ${problem}`);
    states.set(e.metadata.executionId, evolve(before, e));
  }
  return problems;
}

const terminals = (events: ToolEvent[]) =>
  events.filter((e) => e.type === 'ToolCompleted' || e.type === 'ToolFailed');

/** The execution id once the agent heard it waits for approval. */
async function awaiting(c: Call): Promise<Extract<AgentAnswer, { status: 'awaiting_approval' }>> {
  return eventually(
    () =>
      c.interim.find(
        (a): a is Extract<AgentAnswer, { status: 'awaiting_approval' }> => a.status === 'awaiting_approval',
      ),
    WAIT,
    `${c.requestId} to await approval`,
  );
}

t.test('approval over the real services', async (t) => {
  const s = await startTestStack(t, {
    services: ['dispatcher'],
    env: { APPROVAL_RECHECK_MS: '200', APPROVAL_RECHECK_MAX_MS: '1000', APPROVAL_SWEEP_MS: '500' },
  });
  const alice = await s.token('alice', ['user']);
  const aliceApprover = await s.token('alice', ['user', 'approver']);
  const bob = await s.token('bob', ['approver']);
  const dora = await s.token('dora', ['approver']);
  const carol = await s.token('carol', ['user']);
  const admin = await s.token('ada', ['admin']);

  await t.test('request -> waiting -> approve -> runs -> completed', async (t) => {
    const args = { text: 'pay the invoice', secret: 'IBAN DE00 1234' };
    const c = call(s, alice, 'guarded_echo', args, 'appr-1');
    const waiting = await awaiting(c);
    t.equal(waiting.argsHash, argsHash(args), 'the agent is told the hash of its exact arguments');
    t.same(waiting.approverRoles.sort(), ['admin', 'approver'], 'and who may approve');
    const id = waiting.executionId;

    const own = await http(s, 'GET', `/executions/${id}`, alice);
    t.equal(own.body.status, 'awaiting_approval', 'its user sees it awaiting approval');
    t.equal(own.body.approval.argsHash, argsHash(args));
    t.equal(own.body.approval.decision, null);

    const listed = (await http(s, 'GET', '/approvals', bob)).body as ApprovalsPage;
    const mine = listed.approvals.find((a) => a.executionId === id);
    t.ok(mine, 'an approver finds it in GET /approvals');
    t.same(mine?.args, { text: 'pay the invoice', secret: '[REDACTED]' }, 'with its arguments as stored');
    t.equal(mine?.userId, 'alice');
    t.equal(mine?.tool, 'guarded_echo');
    const notListed = (await http(s, 'GET', '/approvals', carol)).body as ApprovalsPage;
    t.notOk(
      notListed.approvals.some((a) => a.executionId === id),
      'a user without an approver role is shown nothing',
    );

    const hash = argsHash(args);
    const byCarol = await http(s, 'POST', `/executions/${id}/approve`, carol, { argsHash: hash });
    t.equal(byCarol.status, 404, 'no approver role: 404, as if it never waited');
    t.equal(byCarol.body.error.code, 'NOT_FOUND');
    const bySelf = await http(s, 'POST', `/executions/${id}/approve`, aliceApprover, { argsHash: hash });
    t.equal(bySelf.status, 403, 'the requester approving their own call: 403');
    t.equal(bySelf.body.error.code, 'SELF_APPROVAL');
    const other = await http(s, 'POST', `/executions/${id}/approve`, bob, {
      argsHash: argsHash({ ...args, secret: 'IBAN DE99 6666' }),
    });
    t.equal(other.status, 409, 'other arguments than those requested: 409');
    t.equal(other.body.error.code, 'HASH_MISMATCH');
    const malformed = await http(s, 'POST', `/executions/${id}/approve`, bob, { argsHash: 'nope' });
    t.equal(malformed.status, 400, 'a body without a hash: 400');
    t.notOk(
      ofExecution(await eventsOf(s, 'alice'), id).some((e) => e.type === 'ToolExecuting'),
      'nothing ran before an approval',
    );

    const approved = await http(s, 'POST', `/executions/${id}/approve`, bob, {
      argsHash: hash,
      reason: 'ok',
    });
    t.equal(approved.status, 200, 'the approver approves');
    t.equal(approved.body.approval.decision.approverId, 'bob');
    const again = await http(s, 'POST', `/executions/${id}/approve`, bob, { argsHash: hash });
    t.equal(again.status, 200, 'the same approver again: their retry, nothing more recorded');
    const second = await http(s, 'POST', `/executions/${id}/approve`, dora, { argsHash: hash });
    t.equal(second.status, 409, 'another approver after it was decided: 409');
    const late = await http(s, 'POST', `/executions/${id}/deny`, dora, { argsHash: hash, reason: 'no' });
    t.equal(late.status, 409, 'a denial after the approval: 409');
    t.equal(late.body.error.code, 'NOT_AWAITING');

    const answer = await c.answer;
    t.equal(answer.status, 'completed', 'the agent gets the result');
    // The tool echoes what it was given; its sensitive field is redacted in answers as in the store.
    t.same(
      answer.status === 'completed' && answer.result,
      { text: args.text, secret: '[REDACTED]' },
      'of the arguments approved',
    );
    const events = ofExecution(await eventsOf(s, 'alice'), id);
    t.same(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolApprovalRequested', 'ToolApproved', 'ToolExecuting', 'ToolCompleted'],
      'recorded once, in order',
    );
    const after = (await http(s, 'GET', '/approvals', bob)).body as ApprovalsPage;
    t.notOk(
      after.approvals.some((a) => a.executionId === id),
      'it left the list',
    );
  });

  await t.test('deny -> DENIED', async (t) => {
    const args = { text: 'delete the backups' };
    const c = call(s, alice, 'guarded_echo', args, 'appr-deny');
    const id = (await awaiting(c)).executionId;
    const noReason = await http(s, 'POST', `/executions/${id}/deny`, bob, { argsHash: argsHash(args) });
    t.equal(noReason.status, 400, 'a denial must say why');
    const denied = await http(s, 'POST', `/executions/${id}/deny`, admin, {
      argsHash: argsHash(args),
      reason: 'not on a Friday',
    });
    t.equal(denied.status, 200, 'an admin may deny');
    t.equal(denied.body.status, 'failed');
    const answer = await c.answer;
    t.equal(answer.status === 'failed' && answer.error.code, 'DENIED', 'the agent hears DENIED');
    const approve = await http(s, 'POST', `/executions/${id}/approve`, bob, { argsHash: argsHash(args) });
    t.equal(approve.status, 409, 'an approval after the denial: 409');
    const events = ofExecution(await eventsOf(s, 'alice'), id);
    t.equal(terminals(events).length, 1, 'one end');
    t.notOk(
      events.some((e) => e.type === 'ToolExecuting'),
      'it never ran',
    );
  });

  await t.test('a deadline that passes ends it APPROVAL_EXPIRED', async (t) => {
    const args = { text: 'quick, before anyone looks' };
    const c = call(s, alice, 'guarded_echo_brief', args, 'appr-expire');
    const id = (await awaiting(c)).executionId;
    const answer = await c.answer;
    t.equal(
      answer.status === 'failed' && answer.error.code,
      'APPROVAL_EXPIRED',
      'the agent hears it expired',
    );
    const late = await http(s, 'POST', `/executions/${id}/approve`, bob, { argsHash: argsHash(args) });
    t.equal(late.status, 410, 'an approval after the deadline: 410');
    const events = ofExecution(await eventsOf(s, 'alice'), id);
    t.equal(terminals(events).length, 1, 'one end');
    t.notOk(
      events.some((e) => e.type === 'ToolExecuting'),
      'it never ran',
    );
  });

  await t.test('an approval racing a cancel: one end', async (t) => {
    const args = { text: 'race' };
    const c = call(s, alice, 'guarded_echo', args, 'appr-race');
    const id = (await awaiting(c)).executionId;
    const [approve, cancel] = await Promise.all([
      http(s, 'POST', `/executions/${id}/approve`, bob, { argsHash: argsHash(args) }),
      http(s, 'POST', `/executions/${id}/cancel`, alice, {}),
    ]);
    const answer = await c.answer;
    const events = ofExecution(await eventsOf(s, 'alice'), id);
    t.equal(
      terminals(events).length,
      1,
      `exactly one end (approve ${approve.status}, cancel ${cancel.status})`,
    );
    const approvedFirst = events.some((e) => e.type === 'ToolApproved');
    t.equal(approve.status, approvedFirst ? 200 : 409, 'the approval is recorded only if it came first');
    if (!approvedFirst) t.equal(answer.status === 'failed' && answer.error.code, 'CANCELLED');
  });

  await t.test('the rule on the arguments: the cost analyzer above the spend threshold', async (t) => {
    const row = (hourlyRate: number) => ({
      service: 'EC2',
      region: 'eu-west-1',
      resourceId: 'i-1',
      usageHours: 720,
      hourlyRate,
      utilization: 0.5,
    });
    const small = await s.agent.execute(
      'cost_analyzer',
      { rows: [row(1)] },
      { token: alice, timeoutMs: WAIT },
    );
    t.equal(small.status, 'completed', 'a small bill runs unasked');
    const bigArgs = { rows: [row(COST_APPROVAL_THRESHOLD / 720 + 1)] };
    const big = call(s, alice, 'cost_analyzer', bigArgs, 'appr-cost');
    const id = (await awaiting(big)).executionId;
    await http(s, 'POST', `/executions/${id}/deny`, bob, { argsHash: argsHash(bigArgs), reason: 'too big' });
    const answer = await big.answer;
    t.equal(
      answer.status === 'failed' && answer.error.code,
      'DENIED',
      'a bill above it waited for an approver',
    );
  });

  await t.test('a tool annotated destructive waits by default', async (t) => {
    const c = call(s, carol, 'destructive_noop', {}, 'appr-destructive');
    const id = (await awaiting(c)).executionId;
    const ok = await http(s, 'POST', `/executions/${id}/approve`, bob, { argsHash: argsHash({}) });
    t.equal(ok.status, 200);
    t.equal((await c.answer).status, 'completed');
  });

  await t.test('a dispatcher killed while a call waits: approval and expiry still work', async (t) => {
    const args = { text: 'survive' };
    const c = call(s, alice, 'guarded_echo', args, 'appr-restart');
    const id = (await awaiting(c)).executionId;
    const brief = call(s, alice, 'guarded_echo_brief', { text: 'expires while down' }, 'appr-restart-brief');
    await awaiting(brief);
    await s.stack.kill('dispatcher');
    await s.stack.start('dispatcher');
    const approved = await http(s, 'POST', `/executions/${id}/approve`, bob, { argsHash: argsHash(args) });
    t.equal(approved.status, 200, 'the approval after the restart is taken');
    const answer = await c.answer;
    t.equal(answer.status, 'completed', 'and the call runs');
    const expired = await brief.answer;
    t.equal(
      expired.status === 'failed' && expired.error.code,
      'APPROVAL_EXPIRED',
      'the deadline that passed while it was down is enforced',
    );
  });

  await t.test('the streams are legal and verify', async (t) => {
    for (const user of ['alice', 'carol']) {
      const events = await eventsOf(s, user);
      t.same(problemsOf(events), [], `${user}: every event follows the life cycle`);
      const report = await verifyHistory(s.store, user);
      t.ok(report.ok, `${user}: the auditor's verification passes`);
      t.equal(report.executions.open, 0, `${user}: every execution ended`);
    }
  });
});
