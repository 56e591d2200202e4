import t from 'tap';
import { AgentAnswer, ErrorCode, RefusalCode, type ToolEvent } from '../../contracts/index.ts';
import { answerFromTerminal, httpStatusOf, outcomeOf, refusal } from './answers.ts';

const metadata = {
  userId: 'u1',
  executionId: '6ca2c6da-d66c-5255-a77f-2ff11c06349c',
  requestId: 'r1',
  correlationId: 'c1',
  causationId: null,
  occurredAt: '2025-01-01T00:00:00.000Z',
  prevHash: '0'.repeat(64),
  hash: '1'.repeat(64),
};

t.test('a terminal event becomes the answer the agent gets', async (t) => {
  const completed = {
    id: '854d455a-2fcc-57b1-9132-a5d21301ccea',
    type: 'ToolCompleted',
    schemaVersion: 1,
    data: { result: { ok: true }, redacted: [], durationMs: 12.5, cached: true },
    metadata,
  } as ToolEvent;
  const a = answerFromTerminal(completed);
  t.strictSame(a, {
    status: 'completed',
    requestId: 'r1',
    executionId: metadata.executionId,
    correlationId: 'c1',
    result: { ok: true },
    durationMs: 12.5,
    cached: true,
  });
  t.ok(AgentAnswer.safeParse(a).success);

  const failed = {
    ...completed,
    type: 'ToolFailed',
    data: { error: { code: 'TIMEOUT', message: 'slow', details: { timeoutMs: 5 } }, durationMs: 5 },
  } as ToolEvent;
  t.match(answerFromTerminal(failed), {
    status: 'failed',
    error: { code: 'TIMEOUT', message: 'slow', details: { timeoutMs: 5 } },
  });
  t.ok(AgentAnswer.safeParse(answerFromTerminal(failed)).success);

  t.throws(() =>
    answerFromTerminal({
      ...completed,
      type: 'ToolExecuting',
      data: { attempt: 1, runner: 'x', timeoutMs: 1 },
    }),
  );
});

t.test('a refusal without ids is a valid answer', async (t) => {
  const r = refusal('UNAUTHENTICATED', 'no token');
  t.ok(AgentAnswer.safeParse(r).success);
  t.strictSame(r, {
    status: 'failed',
    requestId: null,
    executionId: null,
    correlationId: null,
    error: { code: 'UNAUTHENTICATED', message: 'no token' },
  });
  t.match(refusal('VALIDATION', 'x', { requestId: 'r' }), { requestId: 'r', executionId: null });
});

t.test(
  'every code has an HTTP status: 4xx for the request, 5xx for the tool or the dispatcher',
  async (t) => {
    const expected: Record<string, number> = {
      VALIDATION: 400,
      MALFORMED: 400,
      UNAUTHENTICATED: 401,
      FORBIDDEN: 403,
      UNKNOWN_TOOL: 404,
      CANCELLED: 409,
      IDEMPOTENCY_CONFLICT: 409,
      DENIED: 403,
      APPROVAL_EXPIRED: 410,
      RATE_LIMITED: 429,
      TOOL_ERROR: 502,
      OUTPUT_INVALID: 502,
      INTERRUPTED: 502,
      INTERNAL: 500,
      OVERLOADED: 503,
      TIMEOUT: 504,
    };
    for (const code of [...ErrorCode.options, ...RefusalCode.options]) {
      t.equal(httpStatusOf(refusal(code, 'x')), expected[code], code);
    }
    t.equal(
      httpStatusOf({
        status: 'completed',
        requestId: 'r',
        executionId: 'e',
        correlationId: 'c',
        result: 1,
        durationMs: 1,
        cached: false,
      }),
      200,
    );
  },
);

t.test('metric outcomes', async (t) => {
  t.equal(outcomeOf(refusal('TIMEOUT', 'x')), 'TIMEOUT');
  const base = {
    status: 'completed',
    requestId: 'r',
    executionId: 'e',
    correlationId: 'c',
    result: 1,
    durationMs: 1,
  } as const;
  t.equal(outcomeOf({ ...base, cached: false }), 'completed');
  t.equal(outcomeOf({ ...base, cached: true }), 'cached');
});
