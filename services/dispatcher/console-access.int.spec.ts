import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { z } from 'zod';
import { executionIdFor, type CancelResult } from '../../contracts/index.ts';
import { defineTool } from '../../lib/tools/index.ts';
import type { RunningDispatcher } from './app.ts';
import { harness } from './test/harness.ts';

/**
 * What the operator console asks of the dispatcher, against a real NATS, Redis and PostgreSQL: an
 * operator cancels another user's running execution and reads its events; an approver or auditor
 * reads them but does not cancel; a plain user does neither.
 */
const hold = defineTool({
  name: 'console_hold',
  version: '1.0.0',
  description: 'Test tool: waits `ms` unless cancelled.',
  input: z.object({ ms: z.number().int().min(0).max(60_000) }),
  output: z.object({ waited: z.number() }),
  timeoutMs: 60_000,
  idempotent: true,
  run: async ({ ms }, ctx) => {
    await sleep(ms, undefined, { signal: ctx.signal });
    return { waited: ms };
  },
});

async function call(d: RunningDispatcher, method: 'GET' | 'POST', url: string, token: string) {
  const res = await d.app.inject({ method, url, headers: { authorization: `Bearer ${token}` } });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- response bodies are checked field by field
  return { status: res.statusCode, body: res.json<Record<string, any>>() };
}

t.test('operators cancel and read other users’ executions; plain users do not', async (t) => {
  const h = await harness(t);
  const d = await h.start({}, { tools: [hold] });
  const alice = await h.token('alice');
  const bob = await h.token('bob');
  const olga = await h.token('olga', ['operator']);
  const pat = await h.token('pat', ['approver']);
  const aud = await h.token('aud', ['auditor']);

  let running!: () => void;
  const executing = new Promise<void>((resolve) => (running = resolve));
  const answer = h.agent.execute(
    'console_hold',
    { ms: 30_000 },
    {
      token: alice,
      requestId: 'held-1',
      timeoutMs: 60_000,
      onProgress: (a) => {
        if (a.status === 'executing') running();
      },
    },
  );
  answer.catch(() => undefined);
  await executing;
  const executionId = executionIdFor('alice', 'held-1');
  const events = `/executions/${executionId}?userId=alice`;

  t.test('reading the events of another user’s execution', async (t) => {
    for (const [who, token] of [
      ['operator', olga],
      ['approver', pat],
      ['auditor', aud],
    ] as const) {
      const r = await call(d, 'GET', events, token);
      t.equal(r.status, 200, `${who} reads it`);
      t.match(r.body, { executionId, tool: 'console_hold', status: 'executing' });
      t.same(
        r.body.events.map((e: { type: string }) => e.type),
        ['ToolRequested', 'ToolExecuting'],
      );
      t.same(r.body.events[0].data.args, { ms: 30_000 }, 'the arguments as stored');
    }
    const byBob = await call(d, 'GET', events, bob);
    t.equal(byBob.status, 403, 'a plain user naming another user is refused');
    t.equal(byBob.body.error.code, 'FORBIDDEN');
    t.equal((await call(d, 'GET', `/executions/${executionId}`, bob)).status, 404, "not in bob's own stream");
    t.equal(
      (await call(d, 'GET', `/executions/${executionId}`, olga)).status,
      404,
      'without userId: the caller’s own',
    );
    t.equal(
      (await call(d, 'GET', `/executions/${executionId}?userId=a.b`, olga)).status,
      400,
      'a bad user id',
    );
    t.equal((await call(d, 'GET', events, alice)).status, 200, 'the user names themself');
  });

  t.test('cancelling another user’s execution', async (t) => {
    for (const [who, token] of [
      ['a plain user', bob],
      ['an approver', pat],
      ['an auditor', aud],
    ] as const) {
      const r = await call(d, 'POST', `/executions/${executionId}/cancel?userId=alice`, token);
      t.equal(r.status, 403, `${who} may not`);
      t.match(r.body, { cancelled: false, error: { code: 'FORBIDDEN', message: /an operator/ } });
    }
    t.equal((await call(d, 'GET', events, olga)).body.status, 'executing', 'still running');

    const r = await call(d, 'POST', `/executions/${executionId}/cancel?userId=alice`, olga);
    t.equal(r.status, 200, 'an operator may');
    t.match(r.body as CancelResult, {
      cancelled: true,
      answer: { error: { code: 'CANCELLED', details: { cancelledBy: 'olga', admin: true } } },
    });
    t.match(await answer, { status: 'failed', error: { code: 'CANCELLED' } }, 'the agent is told');
    const after = await call(d, 'GET', events, olga);
    t.same(
      after.body.events.map((e: { type: string }) => e.type),
      ['ToolRequested', 'ToolExecuting', 'ToolCancelRequested', 'ToolFailed'],
    );
    t.match(after.body.events[2].data, { by: { userId: 'olga', admin: true } }, 'who cancelled is recorded');
  });
});
