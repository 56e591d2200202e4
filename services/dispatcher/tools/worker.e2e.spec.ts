import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connectNats } from '../../../lib/nats.ts';
import { acceptAnnouncements, ToolRegistry, type ToolContext } from '../../../lib/tools/index.ts';
import { startNats } from '../../../test/support/processes.ts';
import { datasetStatsTool } from './datasetStats.ts';

const SECRET = 'worker-e2e-secret-0123456789abcdef0123456789';
const ENTRY = fileURLToPath(new URL('../worker.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

const nats = await startNats(t);
const nc = await connectNats(nats.url, 'e2e-dispatcher');
t.teardown(() => nc.close());

function startWorker(env: Record<string, string>): {
  proc: ChildProcess;
  exited: Promise<number | null>;
  output: () => string;
} {
  const proc = spawn(process.execPath, ['--import', 'tsx', ENTRY], {
    cwd: ROOT,
    env: {
      PATH: process.env['PATH'] ?? '',
      NATS_URL: nats.url,
      WORKER_SECRET: SECRET,
      LOG_LEVEL: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  proc.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  });
  return { proc, exited, output: () => output };
}

async function waitFor(what: string, condition: () => boolean, timeoutMs = 40_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const ctx = (): ToolContext => ({
  signal: new AbortController().signal,
  userId: 'e2e_user',
  roles: ['user'],
  executionId: '00000000-0000-5000-8000-0000000000e2',
  requestId: 'e2e-1',
  correlationId: 'e2e-1',
  progress: () => undefined,
});

t.test('the worker process serves the named tools and stops cleanly on SIGTERM', async (t) => {
  const registry = new ToolRegistry();
  const listener = await acceptAnnouncements(nc, registry, { secret: SECRET, expireAfterMs: 0 });
  t.teardown(() => listener.stop());
  const w = startWorker({
    WORKER_ID: 'e2e-worker',
    TOOLBUS_WORKER_TOOLS: 'countdown, dataset_stats, sleep',
    TOOLBUS_TEST_TOOLS: '1',
  });
  await waitFor('the worker’s tools', () => registry.list().length === 3);
  t.strictSame(
    registry.list().map((m) => m.name),
    ['countdown', 'dataset_stats', 'sleep'],
  );
  t.equal(registry.resolve('dataset_stats')?.source, 'worker:e2e-worker');
  const stats = (await registry.resolve('dataset_stats')!.run({ columns: { x: [1, 2, 3, 4] } }, ctx())) as {
    columns: Record<string, { mean: number; p50: number }>;
  };
  t.equal(stats.columns['x']?.mean, 2.5);
  t.equal(stats.columns['x']?.p50, 2.5);
  await waitFor('the ready log line', () => w.output().includes('tool worker ready'));

  // SIGTERM while a call runs (its first progress says it has started on the worker): the call
  // still gets its answer, then the process exits 0.
  let progressed = false;
  const running = registry
    .resolve('countdown')!
    .run({ seconds: 2 }, { ...ctx(), progress: () => void (progressed = true) });
  await waitFor('the countdown’s first progress', () => progressed);
  w.proc.kill('SIGTERM');
  t.strictSame(await running, { counted: 2 }, 'the running call finished');
  t.equal(await w.exited, 0, w.output());
  await waitFor('the withdrawal of its tools', () => registry.list().length === 0);
  t.pass('a cleanly stopped worker withdrew its tools at once (no expiry here)');
});

t.test('the worker serves the tools of the configuration file (TOOLBUS_CONFIG)', async (t) => {
  const registry = new ToolRegistry();
  const listener = await acceptAnnouncements(nc, registry, { secret: SECRET, expireAfterMs: 0 });
  t.teardown(() => listener.stop());
  const w = startWorker({
    WORKER_ID: 'e2e-config-worker',
    TOOLBUS_CONFIG: 'examples/toolbus.json',
    TOOLBUS_WORKER_TOOLS: 'word_count',
  });
  await waitFor('word_count from examples/wordCount.ts', () => registry.resolve('word_count') !== undefined);
  t.equal(registry.resolve('word_count')?.source, 'worker:e2e-config-worker');
  t.strictSame(registry.resolve('word_count')?.manifest.sensitive.input, ['apiKey']);
  t.strictSame(await registry.resolve('word_count')!.run({ text: 'one two  three' }, ctx()), { words: 3 });
  w.proc.kill('SIGTERM');
  t.equal(await w.exited, 0);
});

t.test(
  'a bad configuration stops the worker with exit code 1 and a message naming the problem',
  async (t) => {
    const unknown = startWorker({ TOOLBUS_WORKER_TOOLS: 'no_such_tool' });
    t.equal(await unknown.exited, 1);
    t.match(unknown.output(), /unknown tool\(s\) no_such_tool/);
    const badId = startWorker({ WORKER_ID: 'has space' });
    t.equal(await badId.exited, 1);
    t.match(badId.output(), /WORKER_ID/);
  },
);

t.test('a worker whose tool a dispatcher refuses is told, and exits 1 with the reason', async (t) => {
  // This dispatcher runs dataset_stats in its own process, as the default stack does.
  const registry = new ToolRegistry();
  registry.register(datasetStatsTool);
  const listener = await acceptAnnouncements(nc, registry, { secret: SECRET, expireAfterMs: 0 });
  t.teardown(() => listener.stop());
  const w = startWorker({ WORKER_ID: 'e2e-refused-worker', TOOLBUS_WORKER_TOOLS: 'dataset_stats' });
  t.equal(await w.exited, 1, 'the worker does not go on pretending to serve');
  t.match(w.output(), /dispatcher refused this tool/);
  t.match(w.output(), /dataset_stats@1\.0\.0 is already registered in process/);
  t.equal(registry.resolve('dataset_stats')?.source, 'local', 'the dispatcher kept its own tool');
});
