import t from 'tap';
import { z } from 'zod';
import { ToolManifest } from '../../contracts/index.ts';
import { defineTool, serveTools } from '../../lib/tools/index.ts';
import { recordExecution } from '../../test/support/events.ts';
import { eventually, harness } from './test/harness.ts';

/**
 * Tools' behaviour hints (MCP's readOnlyHint, destructiveHint, idempotentHint, openWorldHint) are
 * exported with the JSON Schemas on GET /tools, for local and worker tools alike; they are advice
 * to clients, and the dispatcher's own `idempotent` flag alone decides whether an interrupted
 * execution runs again.
 */

const hintedNotIdempotent = defineTool({
  name: 'hint_says_idempotent',
  version: '1.0.0',
  description: 'Test tool: hinted idempotent, but not declared idempotent.',
  input: z.object({}),
  output: z.object({ ran: z.literal(true) }),
  idempotent: false,
  annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: true },
  async run() {
    return { ran: true as const };
  },
});
const idempotentNotHinted = defineTool({
  name: 'hint_says_not_idempotent',
  version: '1.0.0',
  description: 'Test tool: declared idempotent, hinted otherwise.',
  input: z.object({}),
  output: z.object({ ran: z.literal(true) }),
  idempotent: true,
  annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false },
  async run() {
    return { ran: true as const };
  },
});

t.test('GET /tools exports the hints with the schemas, for local and worker tools', async (t) => {
  const h = await harness(t);
  const d = await h.start();
  const worker = await serveTools(
    h.nc,
    [
      defineTool({
        name: 'remote_lookup',
        version: '1.0.0',
        description: 'Looks something up on the internet (pretend).',
        input: z.object({ q: z.string() }),
        output: z.object({ hits: z.number() }),
        idempotent: true,
        annotations: {
          title: 'Lookup',
          readOnlyHint: true,
          destructiveHint: false,
          idempotentHint: true,
          openWorldHint: true,
        },
        async run() {
          return { hits: 0 };
        },
      }),
    ],
    { workerId: 'hint-worker', secret: h.config.WORKER_SECRET, announceIntervalMs: 0 },
  );
  t.teardown(() => worker.stop());
  await eventually(() => d.registry.resolve('remote_lookup'), 10_000, 'the worker tool');

  const res = await d.app.inject({ method: 'GET', url: '/tools' });
  t.equal(res.statusCode, 200);
  const tools = res.json<{ tools: ToolManifest[] }>().tools;
  t.ok(
    tools.every((m) => ToolManifest.safeParse(m).success),
    'every manifest is valid',
  );
  const byName = new Map(tools.map((m) => [m.name, m]));
  for (const name of ['cost_analyzer', 'dataset_stats', 'admin_runtime_info', 'secret_vault_check']) {
    const m = byName.get(name);
    t.match(
      m,
      {
        inputSchema: { type: 'object' },
        outputSchema: { type: 'object' },
        idempotent: Boolean,
        annotations: {
          title: String,
          readOnlyHint: true,
          destructiveHint: false,
          idempotentHint: Boolean,
          openWorldHint: false,
        },
      },
      `${name}: schemas and the four hints`,
    );
  }
  t.match(byName.get('remote_lookup'), {
    annotations: {
      title: 'Lookup',
      readOnlyHint: true,
      destructiveHint: false,
      idempotentHint: true,
      openWorldHint: true,
    },
  });
});

t.test('the idempotent flag decides re-runs, not the idempotentHint', async (t) => {
  const h = await harness(t);
  await h.start({}, { tools: [hintedNotIdempotent, idempotentNotHinted] });
  const token = await h.token('hanna');
  // Executions a dead dispatcher left mid-tool.
  for (const [requestId, tool] of [
    ['h-no', 'hint_says_idempotent'],
    ['h-yes', 'hint_says_not_idempotent'],
  ] as const) {
    await recordExecution(h.store, 'hanna', { requestId, tool, args: {}, outcome: 'executing' });
  }
  const notRerun = await h.agent.execute('hint_says_idempotent', {}, { token, requestId: 'h-no' });
  t.match(notRerun, { status: 'failed', error: { code: 'INTERRUPTED', message: /not idempotent/ } });
  const rerun = await h.agent.execute('hint_says_not_idempotent', {}, { token, requestId: 'h-yes' });
  t.match(rerun, { status: 'completed', result: { ran: true } });
  const attempts = (await h.events('hanna'))
    .filter((e) => e.metadata.requestId === 'h-yes' && e.type === 'ToolExecuting')
    .map((e) => (e.type === 'ToolExecuting' ? e.data.attempt : 0));
  t.strictSame(attempts, [1, 2], 'run again as attempt 2');
});
