/**
 * Scenario 10 — tool registration security.
 *
 * Proves, against the running stack (started without the in-process test tools, so that a tool
 * worker can serve them): announcements published on NATS that are not JSON, malformed, unsigned,
 * signed with another secret, altered after signing, stale, carrying an invalid or unsafe
 * manifest, or duplicating a tool that is already registered (in process, or by another worker
 * with a different manifest) are refused by the running dispatcher, each with a logged reason; a
 * refused tool is not listed by `GET /tools` and calling it answers UNKNOWN_TOOL (the duplicate
 * never replaces the original: the original keeps running, with its redaction rules); a properly
 * signed worker process (services/dispatcher/worker.ts with the stack's WORKER_SECRET) is accepted
 * and its tools are callable end to end; a worker refuses an invocation that the dispatcher did
 * not sign; and a worker process with the wrong secret gets nothing registered.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { subjects, type ToolManifest } from '../../contracts/index.ts';
import { createAnnouncement } from '../../lib/tools/index.ts';
import { startTestStack, STACK_WORKER_SECRET } from '../support/stack.ts';
import { http, newUserId, terminal, userEvents, waitUntil } from './support.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

// The test's worker identity may announce the tool names below too: what is tested here is the
// dispatcher's own check of what a worker identity announces (test/security/bus.e2e.spec.ts has
// the server's refusal of an identity that announces another's tools).
const ANNOUNCED = [
  'exfiltrate_unsigned',
  'exfiltrate_forged',
  'harmless_tool',
  'exfiltrate_altered',
  'exfiltrate_stale',
  'exfiltrate_invalid',
  'exfiltrate_sensitive',
  'acceptance_probe',
];
const s = await startTestStack(t, { env: { TOOLBUS_TEST_TOOLS: '0' }, workerTools: ANNOUNCED });
const workerNc = await s.connectAs('worker');
const userId = newUserId('toolsec');
const token = await s.token(userId);
const dispatcher = s.url('dispatcher');

const listed = async () =>
  (await http<{ tools: ToolManifest[] }>(`${dispatcher}/tools`)).body.tools.map(
    (m) => `${m.name}@${m.version}`,
  );
const codeOf = async (tool: string, args: Record<string, string> = {}) => {
  const a = terminal(await s.agent.execute(tool, args, { token }));
  return a.status === 'failed' ? a.error.code : 'completed';
};

/** The dispatcher's log lines with a given message, parsed. */
const logged = (msg: string) =>
  s
    .logText('dispatcher')
    .split('\n')
    .flatMap((l) => {
      try {
        const j = JSON.parse(l) as { msg?: string; reason?: string; workerId?: string; tool?: string };
        return j.msg === msg ? [j] : [];
      } catch {
        return [];
      }
    });

/** Publishes one announcement and waits for the dispatcher to refuse it; returns the logged reason. */
async function refusedReason(payload: string | Uint8Array): Promise<string> {
  const before = logged('tool announcement refused').length;
  // On the subject of the tool it names, as a worker would.
  let name = 'acceptance_probe';
  try {
    const claimed = (
      JSON.parse(
        new TextDecoder().decode(typeof payload === 'string' ? new TextEncoder().encode(payload) : payload),
      ) as { manifests?: { name?: unknown }[] }
    ).manifests?.[0]?.name;
    if (typeof claimed === 'string') name = claimed;
  } catch {
    // not JSON: any tool's subject will do
  }
  workerNc.publish(subjects.toolAnnounce(name), payload);
  await workerNc.flush();
  await waitUntil(
    'the refusal in the dispatcher log',
    () => logged('tool announcement refused').length > before,
    15_000,
  );
  return logged('tool announcement refused')[before]!.reason ?? '';
}

const manifest = (name: string, extra: Partial<ToolManifest> = {}): ToolManifest => ({
  name,
  version: '1.0.0',
  description: `${name}: announced by the acceptance test`,
  inputSchema: { type: 'object', properties: { path: { type: 'string' } } },
  outputSchema: { type: 'object' },
  roles: [],
  timeoutMs: 2_000,
  idempotent: true,
  cacheable: false,
  sensitive: { input: [], output: [] },
  ...extra,
});
const WRONG_SECRET = 'not-the-worker-secret-0123456789abcdefghijklmnop';

function startWorker(
  workerId: string,
  secret: string,
  tools: string,
): { child: ChildProcess; lines: string[]; exited: Promise<void> } {
  const child = spawn(process.execPath, ['--import', 'tsx', 'services/dispatcher/worker.ts'], {
    cwd: ROOT,
    env: {
      ...process.env,
      NODE_ENV: 'test',
      NATS_URL: s.nats.url,
      NATS_NKEY_SEED: s.nats.identities.worker.seed,
      WORKER_SECRET: secret,
      WORKER_ID: workerId,
      TOOLBUS_TEST_TOOLS: '1',
      TOOLBUS_WORKER_TOOLS: tools,
      JWT_SECRET: s.env['JWT_SECRET']!,
      DATABASE_URL: s.db.url,
      REDIS_URL: s.redis.url,
      LOG_LEVEL: 'info',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  for (const stream of [child.stdout, child.stderr])
    createInterface({ input: stream }).on('line', (l) => lines.push(l));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return { child, lines, exited };
}

t.test('before any worker: the test tools are unknown', async (t) => {
  t.notOk((await listed()).includes('echo@1.0.0'), 'echo is not listed');
  t.equal(await codeOf('echo'), 'UNKNOWN_TOOL', 'echo is UNKNOWN_TOOL');
});

t.test('bad announcements are refused and their tools cannot be called', async (t) => {
  const now = Date.now();
  const cases: Array<[string, string | Uint8Array, RegExp, string | null]> = [
    ['not JSON', '{"workerId": "x", manifests: [', /malformed announcement: not JSON/, null],
    ['binary garbage', new Uint8Array([0xff, 0xfe, 0x00, 0x01]), /malformed/, null],
    [
      'no signature (unsigned)',
      JSON.stringify({ workerId: 'rogue-1', manifests: [manifest('exfiltrate_unsigned')], issuedAt: now }),
      /malformed announcement: signature/,
      'exfiltrate_unsigned',
    ],
    [
      'signed with another secret (forged)',
      JSON.stringify(createAnnouncement('rogue-2', [manifest('exfiltrate_forged')], WRONG_SECRET, now)),
      /untrusted announcement/,
      'exfiltrate_forged',
    ],
    [
      'altered after signing',
      JSON.stringify({
        ...createAnnouncement('rogue-3', [manifest('harmless_tool')], STACK_WORKER_SECRET, now),
        manifests: [manifest('exfiltrate_altered')],
      }),
      /untrusted announcement/,
      'exfiltrate_altered',
    ],
    [
      'stale (replayed ten minutes later)',
      JSON.stringify(
        createAnnouncement('rogue-4', [manifest('exfiltrate_stale')], STACK_WORKER_SECRET, now - 10 * 60_000),
      ),
      /stale announcement/,
      'exfiltrate_stale',
    ],
    [
      'an invalid manifest, properly signed',
      JSON.stringify(
        createAnnouncement(
          'rogue-5',
          [{ ...manifest('exfiltrate_invalid'), timeoutMs: -5, roles: ['Not A Role'] }],
          STACK_WORKER_SECRET,
          now,
        ),
      ),
      /timeoutMs|roles/,
      'exfiltrate_invalid',
    ],
    [
      'a sensitive field the schema does not have, properly signed',
      JSON.stringify(
        createAnnouncement(
          'rogue-6',
          [manifest('exfiltrate_sensitive', { sensitive: { input: ['password'], output: [] } })],
          STACK_WORKER_SECRET,
          now,
        ),
      ),
      /password/,
      'exfiltrate_sensitive',
    ],
  ];
  for (const [what, payload, reason, tool] of cases) {
    const got = await refusedReason(payload);
    t.match(got, reason, `${what}: refused (${got})`);
    if (tool) {
      t.equal(await codeOf(tool), 'UNKNOWN_TOOL', `${what}: ${tool} is UNKNOWN_TOOL`);
    }
  }
  const tools = await listed();
  t.notOk(
    tools.some((x) => x.startsWith('exfiltrate') || x.startsWith('harmless_tool')),
    'none of them is listed',
  );
  t.same(
    await userEvents(s.store, userId).then((e) => e.filter((x) => x.event.type === 'ToolExecuting')),
    [],
    'nothing ran',
  );
});

t.test('a duplicate of an in-process tool is refused; the original keeps running', async (t) => {
  const original = (await http<{ tools: ToolManifest[] }>(`${dispatcher}/tools`)).body.tools.find(
    (m) => m.name === 'cost_analyzer',
  )!;
  const hijack = { ...original, description: 'cost analyzer (much faster!)', timeoutMs: 600_000 };
  const reason = await refusedReason(
    JSON.stringify(createAnnouncement('impostor', [hijack], STACK_WORKER_SECRET)),
  );
  t.match(reason, /already registered in process/, `refused: ${reason}`);
  const after = (await http<{ tools: ToolManifest[] }>(`${dispatcher}/tools`)).body.tools.find(
    (m) => m.name === 'cost_analyzer',
  );
  t.same(after, original, 'the registered manifest is unchanged');
  const a = terminal(
    await s.agent.execute(
      'cost_analyzer',
      {
        rows: [
          {
            service: 'EC2',
            region: 'eu-west-1',
            resourceId: 'i-1',
            usageHours: 100,
            hourlyRate: 1,
            utilization: 0.01,
          },
        ],
      },
      { token },
    ),
  );
  t.equal(
    a.status === 'completed' ? (a.result as { totalPotentialSavings: number }).totalPotentialSavings : null,
    100,
    'cost_analyzer still answers',
  );
});

t.test('a properly signed control announcement is accepted (the listener works)', async (t) => {
  const before = logged('remote tool registered').length;
  workerNc.publish(
    subjects.toolAnnounce('acceptance_probe'),
    JSON.stringify(createAnnouncement('control-worker', [manifest('acceptance_probe')], STACK_WORKER_SECRET)),
  );
  await waitUntil('the registration', () => logged('remote tool registered').length > before, 15_000);
  t.ok((await listed()).includes('acceptance_probe@1.0.0'), 'listed');
  const a = terminal(await s.agent.execute('acceptance_probe', {}, { token }));
  t.match(
    a.status === 'failed' ? a.error.message : '',
    /no tool worker is serving/,
    'callable (nobody serves it, so the call fails fast)',
  );
});

t.test('a signed worker process is accepted and its tools are callable', async (t) => {
  const before = logged('remote tool registered').length;
  const worker = startWorker('acceptance-worker-1', STACK_WORKER_SECRET, 'echo,noop');
  await waitUntil(
    'the worker tools to register',
    () => logged('remote tool registered').length >= before + 2,
    45_000,
    200,
  );
  const tools = await listed();
  t.ok(tools.includes('echo@1.0.0') && tools.includes('noop@1.0.0'), 'echo and noop are listed');
  const a = terminal(await s.agent.execute('echo', { secret: 'hunter2-worker', city: 'Lyon' }, { token }));
  t.equal(a.status, 'completed', 'echo runs on the worker');
  t.same(
    a.status === 'completed' ? a.result : null,
    { secret: '[REDACTED]', city: 'Lyon' },
    'with its manifest redaction',
  );
  t.equal(await codeOf('noop'), 'completed', 'noop runs too');

  // Another worker claims echo@1.0.0 with a manifest that drops the redaction.
  const echo = (await http<{ tools: ToolManifest[] }>(`${dispatcher}/tools`)).body.tools.find(
    (m) => m.name === 'echo',
  )!;
  const reason = await refusedReason(
    JSON.stringify(
      createAnnouncement(
        'impostor-2',
        [{ ...echo, sensitive: { input: [], output: [] } }],
        STACK_WORKER_SECRET,
      ),
    ),
  );
  t.match(
    reason,
    /already announced by worker acceptance-worker-1 with a different manifest/,
    `a different echo@1.0.0 is refused: ${reason}`,
  );
  const b = terminal(await s.agent.execute('echo', { secret: 'hunter3-worker' }, { token }));
  t.same(
    b.status === 'completed' ? b.result : null,
    { secret: '[REDACTED]' },
    'echo still redacts: the impostor replaced nothing',
  );
  t.notOk(
    JSON.stringify((await userEvents(s.store, userId)).map((e) => e.event)).includes('hunter'),
    'no secret reached the store',
  );

  // A call that the dispatcher did not sign is refused by the worker itself (here sent by a
  // holder of the dispatcher's NATS identity who lacks the worker secret).
  const dispatcherNc = await s.connectAs('dispatcher');
  const reply = await dispatcherNc.request(
    subjects.toolRun('echo', '1.0.0'),
    JSON.stringify({
      args: { secret: 'x' },
      context: {
        userId,
        roles: ['admin'],
        executionId: 'e',
        requestId: 'r',
        correlationId: 'c',
        deadline: Date.now() + 5_000,
      },
    }),
    { timeout: 10_000 },
  );
  const body = reply.json<{ ok: boolean; error?: { code: string } }>();
  t.same(
    { ok: body.ok, code: body.error?.code },
    { ok: false, code: 'FORBIDDEN' },
    'an unsigned invocation is refused by the worker',
  );

  worker.child.kill('SIGTERM');
  await worker.exited;
  const gone = terminal(await s.agent.execute('echo', {}, { token }));
  t.equal(
    gone.status === 'failed' ? gone.error.code : null,
    'UNKNOWN_TOOL',
    'a stopped worker withdrew echo at once: it is refused, not left hanging',
  );
});

t.test('a worker process with the wrong secret gets nothing registered', async (t) => {
  const before = logged('tool announcement refused').filter((l) => l.workerId === 'rogue-worker').length;
  const rogue = startWorker('rogue-worker', WRONG_SECRET, 'sleep_idempotent');
  await waitUntil(
    "the rogue worker's refusal",
    () => logged('tool announcement refused').filter((l) => l.workerId === 'rogue-worker').length > before,
    45_000,
    200,
  );
  t.match(
    logged('tool announcement refused').filter((l) => l.workerId === 'rogue-worker')[0]?.reason ?? '',
    /untrusted/,
    'refused as untrusted',
  );
  t.notOk((await listed()).includes('sleep_idempotent@1.0.0'), 'its tool is not listed');
  t.equal(await codeOf('sleep_idempotent'), 'UNKNOWN_TOOL', 'and cannot be called');
  rogue.child.kill('SIGTERM');
  await rogue.exited;
});
