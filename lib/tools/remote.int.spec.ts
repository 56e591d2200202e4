import t from 'tap';
import { headers, RequestError } from '@nats-io/transport-node';
import { z } from 'zod';
import { canonicalJson, subjects } from '../../contracts/index.ts';
import { connectNats, type NatsConnection } from '../nats.ts';
import { startNats } from '../../test/support/processes.ts';
import {
  acceptAnnouncements,
  createAnnouncement,
  defineTool,
  invokeRemote,
  serveTools,
  signAnnouncement,
  signInvocation,
  toManifest,
  ToolInputError,
  ToolOutputError,
  ToolRegistry,
  ToolRunError,
  type ToolContext,
  type ToolDefinition,
} from './index.ts';

const SECRET = 'remote-test-worker-secret-0123456789abcdef';
const nats = await startNats(t);
const connections: NatsConnection[] = [];
t.teardown(async () => {
  await Promise.all(connections.map((nc) => nc.close()));
});
const connect = async (name: string) => {
  const nc = await connectNats(nats.url, name);
  connections.push(nc);
  return nc;
};

async function waitFor(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function ctx(overrides: Partial<ToolContext> = {}): ToolContext & { progressed: number[] } {
  const progressed: number[] = [];
  return {
    signal: new AbortController().signal,
    userId: 'user_1',
    roles: ['user'],
    executionId: '00000000-0000-5000-8000-000000000001',
    requestId: 'req-1',
    correlationId: 'corr-1',
    progress: (p) => progressed.push(p.fraction),
    progressed,
    ...overrides,
  };
}

const adder = (description = 'Adds two numbers.') =>
  defineTool({
    name: 'remote_adder',
    version: '1.0.0',
    description,
    input: z.object({ a: z.number(), b: z.number() }),
    output: z.object({ sum: z.number(), by: z.string() }),
    idempotent: true,
    async run({ a, b }, c) {
      return { sum: a + b, by: c.userId };
    },
  });

const failing = defineTool({
  name: 'remote_fail',
  version: '1.0.0',
  description: 'Always fails.',
  input: z.object({}),
  output: z.object({}),
  async run() {
    throw new Error('the remote tool broke');
  },
});
const badOutput = defineTool({
  name: 'remote_bad_output',
  version: '1.0.0',
  description: 'Returns the wrong shape.',
  input: z.object({}),
  output: z.object({ n: z.number() }),
  async run() {
    return { n: 'not a number' } as unknown as { n: number };
  },
});
const hang = defineTool({
  name: 'remote_hang',
  version: '1.0.0',
  description: 'Never answers, ignores its signal.',
  input: z.object({}),
  output: z.object({}),
  timeoutMs: 800,
  run: () => new Promise<Record<string, never>>(() => undefined),
});
const hog = defineTool({
  name: 'remote_hog',
  version: '1.0.0',
  description: 'Spins without yielding.',
  input: z.object({ ms: z.number().int() }),
  output: z.object({}),
  timeoutMs: 500,
  async run({ ms }) {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      // spin
    }
    return {};
  },
});
const adminOnly = defineTool({
  name: 'remote_admin',
  version: '1.0.0',
  description: 'Admin only.',
  input: z.object({}),
  output: z.object({ ok: z.boolean() }),
  roles: ['admin'],
  async run() {
    return { ok: true };
  },
});
const stepper = defineTool({
  name: 'remote_progress',
  version: '1.0.0',
  description: 'Reports progress.',
  input: z.object({ steps: z.number().int() }),
  output: z.object({ steps: z.number().int() }),
  async run({ steps }, c) {
    for (let i = 1; i <= steps; i++) {
      await new Promise((r) => setTimeout(r, 5));
      c.progress({ fraction: i / steps });
    }
    return { steps };
  },
});

/** A dispatcher-side registry listening for announcements, with the refusals it logged. */
async function dispatcherSide(t: Tap, opts: { expireAfterMs?: number } = {}) {
  const nc = await connect('dispatcher');
  const registry = new ToolRegistry();
  const refused: Array<{ reason: string; workerId: string | undefined }> = [];
  const listener = await acceptAnnouncements(nc, registry, {
    secret: SECRET,
    onRefused: (reason, workerId) => refused.push({ reason, workerId }),
    expireAfterMs: opts.expireAfterMs ?? 0,
  });
  t.teardown(() => listener.stop());
  return { nc, registry, refused };
}

async function worker(
  t: Tap,
  workerId: string,
  tools: ToolDefinition[],
  opts: { announceIntervalMs?: number; secret?: string } = {},
) {
  const nc = await connect(workerId);
  const server = await serveTools(nc, tools, {
    workerId,
    secret: opts.secret ?? SECRET,
    announceIntervalMs: opts.announceIntervalMs ?? 0,
  });
  t.teardown(() => server.stop());
  return { nc, server };
}
type Tap = { teardown(fn: () => unknown): void };

t.test('a signed announcement becomes callable, whichever side starts first', async (t) => {
  // The worker first: the dispatcher's discover message makes it announce again.
  await worker(t, 'early-worker', [adder()]);
  const d = await dispatcherSide(t);
  await waitFor('remote_adder', () => d.registry.resolve('remote_adder') !== undefined);
  const tool = d.registry.resolve('remote_adder')!;
  t.equal(tool.source, 'worker:early-worker');
  t.strictSame(
    await tool.run({ a: 2, b: 40 }, ctx()),
    { sum: 42, by: 'user_1' },
    'ran in the worker with the caller’s context',
  );
  t.strictSame(
    d.registry.list().map((m) => m.name),
    ['remote_adder'],
  );
  t.strictSame(d.refused, []);

  // A worker started later announces at start.
  await worker(t, 'late-worker', [failing]);
  await waitFor('remote_fail', () => d.registry.resolve('remote_fail') !== undefined);
  t.equal(d.registry.resolve('remote_fail')?.source, 'worker:late-worker');
});

t.test('forged, stale, malformed and duplicate announcements are refused and never callable', async (t) => {
  const d = await dispatcherSide(t);
  d.registry.register(
    defineTool({
      name: 'local_only',
      version: '1.0.0',
      description: 'In process.',
      input: z.object({}),
      output: z.object({ where: z.string() }),
      async run() {
        return { where: 'local' };
      },
    }),
  );
  const sneaky = defineTool({ ...adder(), name: 'sneaky_tool' });
  // On the subject of the tool its first manifest names, as a worker would.
  const publish = (value: unknown) => {
    const name = (value as { manifests?: { name?: string }[] } | null)?.manifests?.[0]?.name;
    d.nc.publish(
      subjects.toolAnnounce(
        typeof name === 'string' && /^[a-z][a-z0-9_]{1,63}$/.test(name) ? name : 'no_name',
      ),
      typeof value === 'string' ? value : JSON.stringify(value),
    );
  };
  const waitRefusals = (n: number) => waitFor(`${n} refusals`, () => d.refused.length >= n);

  // A worker that does not know the secret.
  await worker(t, 'impostor', [sneaky], { secret: 'not-the-secret-not-the-secret-not-the' });
  await waitRefusals(1);
  t.match(d.refused[0], { reason: /signature does not match/, workerId: 'impostor' });

  // A correctly signed but altered announcement (a manifest swapped after signing).
  const genuine = createAnnouncement('w-alter', [toManifest(adder())], SECRET);
  publish({ ...genuine, manifests: [toManifest(sneaky)] });
  await waitRefusals(2);
  t.match(d.refused[1]?.reason, /signature does not match/);

  // Stale: signed five minutes ago (a replay).
  publish(createAnnouncement('w-stale', [toManifest(sneaky)], SECRET, Date.now() - 5 * 60_000));
  await waitRefusals(3);
  t.match(d.refused[2], { reason: /stale announcement/, workerId: 'w-stale' });

  // Malformed: not JSON, no signature, a manifest that breaks the contract.
  publish('{not json');
  await waitRefusals(4);
  t.match(d.refused[3]?.reason, /malformed announcement: not JSON/);
  const { signature: _s, ...unsigned } = createAnnouncement('w-unsigned', [toManifest(sneaky)], SECRET);
  publish(unsigned);
  await waitRefusals(5);
  t.match(d.refused[4], { reason: /malformed announcement: signature/, workerId: 'w-unsigned' });
  const badManifest = { ...toManifest(sneaky), name: 'Sneaky-Tool' };
  publish(createAnnouncement('w-bad', [badManifest], SECRET));
  await waitRefusals(6);
  t.match(d.refused[5], { reason: /name/, workerId: 'w-bad' });

  // Duplicate of an in-process tool.
  const localManifest = d.registry.resolve('local_only')!.manifest;
  publish(createAnnouncement('w-dup', [localManifest], SECRET));
  await waitRefusals(7);
  t.match(d.refused[6], { reason: /already registered in process/, workerId: 'w-dup' });

  // Duplicate name@version with a different contract from another worker.
  await worker(t, 'first', [adder()]);
  await waitFor('remote_adder', () => d.registry.resolve('remote_adder') !== undefined);
  publish(createAnnouncement('second', [toManifest(adder('Adds, but differently.'))], SECRET));
  await waitRefusals(8);
  t.match(d.refused[7], {
    reason: /already announced by worker first with a different manifest/,
    workerId: 'second',
  });

  t.equal(d.registry.resolve('sneaky_tool'), undefined, 'nothing refused became callable');
  t.equal(d.registry.resolve('local_only')?.source, 'local');
  t.strictSame(await d.registry.resolve('local_only')!.run({}, ctx()), { where: 'local' });
  t.equal(d.registry.resolve('remote_adder')?.manifest.description, 'Adds two numbers.');
  t.strictSame(d.registry.workersOf('remote_adder', '1.0.0'), ['first']);
  t.equal(d.refused.length, 8, 'each refusal reported once');
});

t.test('signatures: canonical over workerId, manifests and issuedAt', async (t) => {
  const m = toManifest(adder());
  const a = createAnnouncement('w1', [m], SECRET, 1_700_000_000_000);
  t.equal(
    a.signature,
    signAnnouncement({ workerId: 'w1', manifests: [m], issuedAt: 1_700_000_000_000 }, SECRET),
  );
  const reordered = JSON.parse(
    canonicalJson({ issuedAt: a.issuedAt, manifests: a.manifests, workerId: a.workerId }),
  ) as typeof a;
  t.equal(signAnnouncement(reordered, SECRET), a.signature, 'key order does not matter');
  t.not(signAnnouncement({ ...a, issuedAt: a.issuedAt + 1 }, SECRET), a.signature);
});

t.test('remote runs: results, errors and timeouts map to codes', async (t) => {
  await worker(t, 'busy-worker', [adder(), failing, badOutput, hang, hog, adminOnly, stepper]);
  const d = await dispatcherSide(t);
  await waitFor('all seven tools', () => d.registry.list().length === 7);
  const manifest = (name: string) => d.registry.resolve(name)!.manifest;
  const errorOf = (p: Promise<unknown>) =>
    p.then(
      () => undefined,
      (e: unknown) => e as Error,
    );

  // The worker's own checks (called directly, past the dispatcher-side check).
  const invalid = await errorOf(
    invokeRemote(d.nc, manifest('remote_adder'), { a: 'x' }, ctx(), { secret: SECRET }),
  );
  t.type(invalid, ToolInputError);
  t.equal((invalid as ToolRunError).code, 'VALIDATION');
  t.match(invalid?.message, /expected number/);

  const broke = await errorOf(d.registry.resolve('remote_fail')!.run({}, ctx()));
  t.type(broke, ToolRunError);
  t.equal((broke as ToolRunError).code, 'TOOL_ERROR');
  t.equal(broke?.message, 'the remote tool broke');

  const bad = await errorOf(d.registry.resolve('remote_bad_output')!.run({}, ctx()));
  t.type(bad, ToolOutputError);
  t.equal((bad as ToolRunError).code, 'OUTPUT_INVALID');

  // A hanging tool: the worker aborts it at the deadline and answers TIMEOUT.
  const hung = await errorOf(invokeRemote(d.nc, manifest('remote_hang'), {}, ctx(), { secret: SECRET }));
  t.type(hung, ToolRunError);
  t.equal((hung as ToolRunError).code, 'TIMEOUT');

  // A busy loop past the deadline: the late result is refused.
  const hogged = await errorOf(d.registry.resolve('remote_hog')!.run({ ms: 900 }, ctx()));
  t.equal((hogged as ToolRunError).code, 'TIMEOUT');
  t.match(hogged?.message, /ran past its deadline/);

  // The dispatcher's signal ends the call at once, with its reason.
  const controller = new AbortController();
  const reason = new Error('cancelled');
  setTimeout(() => controller.abort(reason), 50);
  t.equal(
    await errorOf(d.registry.resolve('remote_hang')!.run({}, ctx({ signal: controller.signal }))),
    reason,
  );

  // Roles are checked again by the worker.
  const forbidden = await errorOf(
    invokeRemote(d.nc, manifest('remote_admin'), {}, ctx({ roles: ['user'] }), { secret: SECRET }),
  );
  t.equal((forbidden as ToolRunError).code, 'FORBIDDEN');
  t.strictSame(await d.registry.resolve('remote_admin')!.run({}, ctx({ roles: ['admin'] })), { ok: true });

  // Progress travels back.
  const c = ctx();
  t.strictSame(await d.registry.resolve('remote_progress')!.run({ steps: 4 }, c), { steps: 4 });
  t.strictSame(c.progressed, [0.25, 0.5, 0.75, 1]);

  // An invocation that is not signed by a dispatcher is refused.
  const payload = JSON.stringify({
    args: {},
    context: {
      userId: 'x',
      roles: ['admin'],
      executionId: 'e',
      requestId: 'r',
      correlationId: 'c',
      deadline: Date.now() + 5_000,
    },
  });
  const unsigned = await d.nc.request(subjects.toolRun('remote_admin', '1.0.0'), payload, {
    timeout: 10_000,
  });
  t.match(unsigned.json(), { ok: false, error: { code: 'FORBIDDEN' } });
  const h = headers();
  h.set('Toolbus-Signature', 'ab'.repeat(32));
  const forged = await d.nc.request(subjects.toolRun('remote_admin', '1.0.0'), payload, {
    timeout: 10_000,
    headers: h,
  });
  t.match(forged.json(), { ok: false, error: { code: 'FORBIDDEN' } });
});

t.test('the dispatcher’s abort reaches the worker: the tool’s own signal fires', async (t) => {
  const aborted: Array<{ executionId: string; reason: string }> = [];
  let started = 0;
  const waiter = defineTool({
    name: 'remote_waiter',
    version: '1.0.0',
    description: 'Waits until its signal fires, and says so.',
    input: z.object({}),
    output: z.object({}),
    timeoutMs: 20_000,
    run: (_args, c) =>
      new Promise<Record<string, never>>((_resolve, reject) => {
        started++;
        c.signal.addEventListener('abort', () => {
          const reason = c.signal.reason as Error;
          aborted.push({ executionId: c.executionId, reason: reason.message });
          reject(reason);
        });
      }),
  });
  const w = await worker(t, 'cancel-worker', [waiter]);
  const d = await dispatcherSide(t);
  await waitFor('the waiter', () => d.registry.resolve('remote_waiter') !== undefined);

  // A forged cancel (not signed with the worker secret) is ignored.
  const c1 = new AbortController();
  const running = d.registry
    .resolve('remote_waiter')!
    .run({}, ctx({ signal: c1.signal, executionId: '00000000-0000-5000-8000-00000000000a' }));
  running.catch(() => undefined);
  await waitFor('the tool to start on the worker', () => started === 1);
  const cancelSubject = subjects.toolCancel('remote_waiter');
  w.nc.publish(cancelSubject, JSON.stringify({ invocationId: 'anything' }));
  const h = headers();
  h.set('Toolbus-Signature', signInvocation(cancelSubject, '{"invocationId":"x"}', 'wrong-secret'));
  d.nc.publish(cancelSubject, '{"invocationId":"x"}', { headers: h });
  // Both reached the server before the dispatcher's real cancel below: the worker handles them
  // first, so any abort they caused would come before the real one.
  await Promise.all([w.nc.flush(), d.nc.flush()]);

  // The dispatcher gives up on the call: the worker is told, and its tool sees its signal fire.
  const reason = new ToolRunError('CANCELLED', 'cancelled by the user');
  c1.abort(reason);
  t.equal(
    await running.then(
      () => undefined,
      (e: unknown) => e,
    ),
    reason,
    'the call ends at once',
  );
  await waitFor('the worker to abort the tool', () => aborted.length >= 1, 10_000);
  t.equal(aborted.length, 1, 'nothing stopped on a cancel that is not the dispatcher’s');
  t.match(aborted[0], {
    executionId: '00000000-0000-5000-8000-00000000000a',
    reason: 'the dispatcher cancelled this invocation',
  });
});

t.test('two workers in the queue group share the calls', async (t) => {
  const whoami = (id: string) =>
    defineTool({
      name: 'remote_whoami',
      version: '1.0.0',
      description: 'Says which worker ran it.',
      input: z.object({}),
      output: z.object({ worker: z.string() }),
      async run() {
        return { worker: id };
      },
    });
  await worker(t, 'qw1', [whoami('qw1')]);
  await worker(t, 'qw2', [whoami('qw2')]);
  const d = await dispatcherSide(t);
  await waitFor('both workers', () => d.registry.workersOf('remote_whoami', '1.0.0').length === 2);
  t.strictSame(d.refused, [], 'the same manifest from a second instance is not a duplicate');
  const tool = d.registry.resolve('remote_whoami')!;
  const results = await Promise.all(
    Array.from({ length: 40 }, () => tool.run({}, ctx()) as Promise<{ worker: string }>),
  );
  const counts = new Map<string, number>();
  for (const r of results) counts.set(r.worker, (counts.get(r.worker) ?? 0) + 1);
  t.strictSame([...counts.keys()].sort(), ['qw1', 'qw2'], `both served (${JSON.stringify([...counts])})`);
  t.equal(results.length, 40, 'each call answered once');
});

t.test('a cleanly stopped worker withdraws its tools at once', async (t) => {
  // No expiry: only the withdrawal can remove the tool.
  const d = await dispatcherSide(t, { expireAfterMs: 0 });
  const gone = await worker(t, 'leaving', [failing]);
  await worker(t, 'staying', [adder()]);
  await waitFor('both tools', () => d.registry.list().length === 2);
  await gone.server.stop();
  await waitFor('the withdrawal', () => d.registry.resolve('remote_fail') === undefined);
  t.ok(d.registry.resolve('remote_adder'), 'the other worker’s tool stays');
});

t.test('a worker that vanishes: calls fail as TOOL_ERROR, and its silent tools expire', async (t) => {
  // Expiry long enough for a busy server to notice the closed connection first.
  const d = await dispatcherSide(t, { expireAfterMs: 10_000 });
  const gone = await worker(t, 'vanishing', [failing], { announceIntervalMs: 300 });
  await worker(t, 'staying', [adder()], { announceIntervalMs: 300 });
  await waitFor('both tools', () => d.registry.list().length === 2);
  await gone.nc.close(); // no stop(): nothing is withdrawn, as when the process is killed
  // Once the server has dropped the closed connection's subscription (a busy server notices a
  // closed socket late), nobody answers the tool's subject: a call then fails at once.
  await waitFor('the server to drop the vanished worker', async () => {
    try {
      await d.nc.request(subjects.toolRun('remote_fail', '1.0.0'), '{}', { timeout: 1_000 });
      return false;
    } catch (x) {
      return x instanceof RequestError && x.isNoResponders();
    }
  });
  const e = await d.registry
    .resolve('remote_fail')!
    .run({}, ctx())
    .then(
      () => undefined,
      (x: unknown) => x as ToolRunError,
    );
  t.equal(e?.code, 'TOOL_ERROR');
  t.match(e?.details, { reason: 'no_responders' });
  await waitFor('the silent worker to expire', () => d.registry.resolve('remote_fail') === undefined);
  t.ok(d.registry.resolve('remote_adder'), 'the worker that keeps announcing stays');
});

t.test('a worker’s latest announcement is the whole list of what it serves', async (t) => {
  const d = await dispatcherSide(t);
  const first = await worker(t, 'shrinking', [adder(), failing]);
  await waitFor('two tools', () => d.registry.list().length === 2);
  await first.server.stop();
  await worker(t, 'shrinking', [adder()]);
  await waitFor('one tool', () => d.registry.list().length === 1);
  t.ok(d.registry.resolve('remote_adder'));
  t.equal(d.registry.resolve('remote_fail'), undefined);
});
