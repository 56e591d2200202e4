import { randomBytes } from 'node:crypto';
import t from 'tap';
import { UNKNOWN_TOOL_LABEL } from '../../contracts/index.ts';
import { signToken } from '../../lib/auth.ts';
import { eventually, harness } from '../../services/dispatcher/test/harness.ts';
import { startProjector } from '../../services/projector/app.ts';
import { testConfig } from '../../services/projector/testkit.ts';

/**
 * An agent asks for many tools that do not exist, each with a made-up name. Every request is
 * refused (UNKNOWN_TOOL) and recorded in the user's stream with the name as asked, but no name
 * becomes a Prometheus label (dispatcher, projector) or a row of a per-tool read model: they all
 * count under `(unknown)`. A known tool keeps its own label and row.
 */
t.test('made-up tool names become no labels and no per-tool rows', async (t) => {
  const secret = randomBytes(32).toString('hex');
  const h = await harness(t, { JWT_SECRET: secret, RATE_LIMIT_PER_SEC: '1000', RATE_LIMIT_BURST: '1000' });
  const d = await h.start();
  const p = await startProjector(testConfig(h.databaseUrl, { JWT_SECRET: secret }), { store: h.store });
  t.teardown(() => p.close());

  const users = ['mallory', 'mallory2', 'mallory3', 'mallory4'];
  const tokens = await Promise.all(users.map((u) => h.token(u)));
  const names = Array.from({ length: 200 }, () => `made_up_${randomBytes(8).toString('hex')}`);

  const known = await h.agent.execute('echo', { hello: 1 }, { token: tokens[0]!, timeoutMs: 30_000 });
  t.match(known, { status: 'completed' }, 'a known tool runs');

  // Batches of 20 at once; each name asked once, some with a version.
  for (let i = 0; i < names.length; i += 20) {
    const answers = await Promise.all(
      names.slice(i, i + 20).map((name, j) =>
        h.agent.execute(
          name,
          { x: j },
          {
            token: tokens[(i + j) % tokens.length]!,
            requestId: `unknown-${i + j}`,
            timeoutMs: 30_000,
            ...(j % 4 === 0 ? { version: '1.0.0' } : {}),
          },
        ),
      ),
    );
    for (const a of answers) {
      if (a.status !== 'failed' || a.error.code !== 'UNKNOWN_TOOL')
        t.fail(`refused UNKNOWN_TOOL: ${JSON.stringify(a)}`);
    }
  }
  t.pass('every made-up tool is refused UNKNOWN_TOOL');

  const mentions = (text: string) => names.filter((n) => text.includes(n));

  t.test('the user stream keeps the name as asked, without a version', async (t) => {
    const events = (await Promise.all(users.map((u) => h.events(u)))).flat();
    const requested = events.filter(
      (e) => e.type === 'ToolRequested' && e.metadata.requestId.startsWith('unknown-'),
    );
    t.equal(requested.length, names.length, 'each request recorded');
    t.ok(
      requested.every(
        (e) => e.type === 'ToolRequested' && names.includes(e.data.tool) && e.data.version === null,
      ),
      'with its name, and version null (no registered tool)',
    );
  });

  t.test("the dispatcher's /metrics", async (t) => {
    const text = (await d.app.inject({ method: 'GET', url: '/metrics' })).body;
    t.strictSame(mentions(text), [], 'no made-up name anywhere');
    const unknown = text.match(
      /^toolbus_executions_total\{[^}]*tool="\(unknown\)"[^}]*outcome="UNKNOWN_TOOL"[^}]*\} (\d+)$/m,
    );
    t.equal(Number(unknown?.[1]), names.length, `all counted under ${UNKNOWN_TOOL_LABEL}`);
    t.match(
      text,
      /toolbus_executions_total\{[^}]*tool="echo"[^}]*outcome="completed"/,
      'the known tool keeps its label',
    );
  });

  t.test("the projector's read models, query API and /metrics", async (t) => {
    const admin = await signToken(secret, { sub: 'ops', roles: ['admin'] });
    type Row = { tool: string; refused: number; completed: number };
    const toolMetrics = async () => {
      const res = await p.app.inject({
        url: '/tools/metrics',
        headers: { authorization: `Bearer ${admin}` },
      });
      return res.json<{ tools: Row[] }>().tools;
    };
    // Every refusal and the known tool's run projected (the refusals are appended concurrently).
    const tools = await eventually(
      async () => {
        const rows = await toolMetrics();
        const unknown = rows.find((r) => r.tool === UNKNOWN_TOOL_LABEL);
        return unknown && unknown.refused >= names.length && rows.some((r) => r.tool === 'echo') && rows;
      },
      30_000,
      'every execution projected',
    );
    t.strictSame(mentions(JSON.stringify(tools)), [], 'no made-up name in GET /tools/metrics');
    t.match(
      tools.find((r) => r.tool === UNKNOWN_TOOL_LABEL),
      { refused: names.length },
      `the refusals counted under ${UNKNOWN_TOOL_LABEL}`,
    );
    t.match(
      tools.find((r) => r.tool === 'echo'),
      { completed: 1 },
      'the known tool keeps its row',
    );

    const rows = await p.pool.query<{ tool: string }>(
      'select tool from projection.tool_metrics union all select tool from projection.tool_metrics_minute',
    );
    t.strictSame(mentions(rows.rows.map((r) => r.tool).join('\n')), [], 'no per-tool table row per name');
    t.strictSame(
      [...new Set(rows.rows.map((r) => r.tool))].sort(),
      [UNKNOWN_TOOL_LABEL, 'echo'].sort(),
      'only the known tool and (unknown)',
    );

    const metrics = (await p.app.inject({ url: '/metrics' })).body;
    t.strictSame(mentions(metrics), [], "no made-up name in the projector's /metrics");

    // The executions read model is one row per execution, the user's own history: it keeps the
    // name the user asked for (bounded by their requests, like the stream itself).
    const r = await p.app.inject({
      url: '/executions?limit=500',
      headers: { authorization: `Bearer ${tokens[0]!}` },
    });
    const mine = r.json<{ items: Array<{ tool: string; error: { code: string } | null }> }>().items;
    t.ok(
      mine.some((e) => names.includes(e.tool) && e.error?.code === 'UNKNOWN_TOOL'),
      "the user's own execution rows keep the asked name",
    );
  });
});
