/**
 * A call that waits for an approver, made through the MCP gateway as a task (2025-11-25): the task
 * is `input_required` (with who may approve, until when) while it waits, then `completed` once an
 * approver approves it through the dispatcher's HTTP API. Real dispatcher and gateway processes.
 */
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import t, { type Test } from 'tap';
import { z } from 'zod';
import { argsHash, type JsonObject } from '../../contracts/index.ts';
import { eventually } from '../../services/dispatcher/test/harness.ts';
import { startTestStack } from '../support/stack.ts';

const TaskResult = z.looseObject({ task: z.looseObject({ taskId: z.string(), status: z.string() }) });
const TaskState = z.looseObject({
  taskId: z.string(),
  status: z.string(),
  statusMessage: z.string().optional(),
});
const ToolResult = z.looseObject({ structuredContent: z.unknown().optional() });

/** A dispatcher and a gateway, and the SDK's client connected to it as `user`. */
async function gatewayClient(t: Test, user: string) {
  const ts = await startTestStack(t, {
    services: ['dispatcher', 'gateway'],
    // guarded_echo's timeout (5 s) is under GATEWAY_TASK_MIN_TIMEOUT_MS: it is a task for its approval.
    env: { APPROVAL_RECHECK_MS: '200', APPROVAL_RECHECK_MAX_MS: '1000' },
  });
  const client = new Client({ name: 'approval-e2e', version: '1.0.0' });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(`${ts.url('gateway')}/mcp`), {
      requestInit: { headers: { authorization: `Bearer ${await ts.token(user)}` } },
    }),
  );
  t.teardown(() => client.close());
  /** Approves an execution as an approver, through the dispatcher's HTTP API. */
  const approve = async (executionId: string, args: JsonObject) =>
    fetch(`${ts.url('dispatcher')}/executions/${executionId}/approve`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${await ts.token('otto', ['approver'])}`,
        'content-type': 'application/json',
      },
      body: JSON.stringify({ argsHash: argsHash(args) }),
    });
  return { ts, client, approve };
}

t.test('through the gateway, a waiting call is an input_required task', async (t) => {
  const { client, approve } = await gatewayClient(t, 'nina');

  const args = { text: 'wire the deposit' };
  const created = await client.request(
    { method: 'tools/call', params: { name: 'guarded_echo', arguments: args, task: { ttl: 60_000 } } },
    TaskResult,
  );
  const { taskId } = created.task;
  const get = () => client.request({ method: 'tasks/get', params: { taskId } }, TaskState);
  const waiting = await eventually(
    async () => {
      const s = await get();
      return s.status === 'input_required' ? s : null;
    },
    60_000,
    'the task to need input',
  );
  t.match(waiting.statusMessage, /awaits approval by approver or admin until/, 'it says who and until when');

  t.equal((await approve(taskId, args)).status, 200, 'approved (the task id is the execution id)');
  await eventually(async () => (await get()).status === 'completed', 60_000, 'the task to complete');
  const result = await client.request({ method: 'tasks/result', params: { taskId } }, ToolResult);
  t.same(result.structuredContent, args, 'its result');

  const other = await client.request(
    {
      method: 'tools/call',
      params: { name: 'guarded_echo', arguments: { text: 'no' }, task: { ttl: 60_000 } },
    },
    TaskResult,
  );
  const otherState = () =>
    client.request({ method: 'tasks/get', params: { taskId: other.task.taskId } }, TaskState);
  await eventually(
    async () => (await otherState()).status === 'input_required',
    60_000,
    'the second to wait',
  );
  const cancelled = await client.request(
    { method: 'tasks/cancel', params: { taskId: other.task.taskId } },
    TaskState,
  );
  t.equal(cancelled.status, 'cancelled', 'a waiting task can be cancelled');
});

t.test('a plain call that waits for an approver says so as progress, then answers', async (t) => {
  const { ts, client, approve } = await gatewayClient(t, 'pia');
  const listed = await client.listTools();
  t.match(
    listed.tools.find((tool) => tool.name === 'guarded_echo')?.execution,
    { taskSupport: 'optional' },
    'a tool that needs approval may be called as a task',
  );
  t.match(
    listed.tools.find((tool) => tool.name === 'destructive_noop')?.execution,
    { taskSupport: 'optional' },
    "so may one that waits under the operator's default for destructive tools",
  );

  const args = { text: 'pay the invoice' };
  const progress: Array<{ progress: number; message?: string }> = [];
  const call = client.callTool(
    { name: 'guarded_echo', arguments: args },
    {
      onprogress: (p: { progress: number; message?: string }) => progress.push(p),
      resetTimeoutOnProgress: true,
    },
  );
  await eventually(async () => progress.length > 0, 60_000, 'the progress that says it waits');
  t.match(progress[0], { progress: 0, message: /^awaits approval by approver or admin until / });
  const executionId = await eventually(
    async () => {
      const res = await fetch(`${ts.url('dispatcher')}/approvals`, {
        headers: { authorization: `Bearer ${await ts.token('otto', ['approver'])}` },
      });
      const page = (await res.json()) as { approvals: Array<{ executionId: string; userId: string }> };
      return page.approvals.find((a) => a.userId === 'pia')?.executionId ?? null;
    },
    60_000,
    'the wait in the approvers’ list',
  );
  t.equal((await approve(executionId, args)).status, 200, 'approved');
  t.same((await call).structuredContent, args, 'the call answers with the result');
});
