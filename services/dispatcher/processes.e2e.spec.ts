import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { verifyChain, type AgentAnswer, type ToolEvent } from '../../contracts/index.ts';
import { eventually, harness, type Harness } from './test/harness.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

interface Proc {
  id: string;
  child: ChildProcess;
  output: string[];
  exited: Promise<number | null>;
}

/** A dispatcher as its own process (`node --import tsx services/dispatcher/main.ts`), ready when it says so. */
async function spawnDispatcher(h: Harness, id: string, env: Record<string, string> = {}): Promise<Proc> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'services/dispatcher/main.ts'], {
    cwd: root,
    env: { ...process.env, ...h.env, DISPATCHER_ID: id, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  const collect = (d: Buffer) => output.push(...d.toString('utf8').split('\n').filter(Boolean));
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await eventually(
    () => output.some((l) => l.includes('"dispatcher ready"')) || child.exitCode !== null,
    60_000,
    `${id} to start`,
  );
  if (child.exitCode !== null) throw new Error(`${id} exited: ${output.join('\n')}`);
  return { id, child, output, exited };
}

const runnersOf = (events: ToolEvent[]) =>
  events.flatMap((e) => (e.type === 'ToolExecuting' ? [e.data.runner] : []));

t.test('two dispatcher processes share the load, and stop cleanly on SIGTERM', async (t) => {
  const h = await harness(t, { DISPATCH_CONCURRENCY: '2' });
  const procs = await Promise.all([spawnDispatcher(h, 'proc-a'), spawnDispatcher(h, 'proc-b')]);
  t.teardown(() => procs.forEach((p) => p.child.exitCode === null && p.child.kill('SIGKILL')));
  const token = await h.token('pat');
  const answers = await Promise.all(
    Array.from({ length: 16 }, (_, i) =>
      h.agent.execute('sleep', { ms: 250 }, { token, requestId: `p-${i}`, timeoutMs: 60_000 }),
    ),
  );
  t.ok(
    answers.every((a) => a.status === 'completed'),
    'all completed',
  );
  const events = await h.events('pat');
  const runners = runnersOf(events);
  t.equal(runners.length, 16, 'each ran once');
  t.ok(
    runners.includes('proc-a') && runners.includes('proc-b'),
    `both processes ran some (${runners.join(',')})`,
  );
  t.equal(verifyChain(events), null);

  for (const p of procs) p.child.kill('SIGTERM');
  const codes = await Promise.all(procs.map((p) => p.exited));
  t.strictSame(codes, [0, 0], 'both exit 0 after SIGTERM');
  t.ok(
    procs.every((p) => p.output.some((l) => l.includes('"dispatcher stopped"'))),
    'and say so',
  );
});

t.test('a dispatcher killed mid-tool: after a restart every request ends exactly once', async (t) => {
  // kim's two calls hold both of her slots when the first process dies; a slot is a 1 s lease.
  const h = await harness(t, { ACK_WAIT_MS: '2000', USER_CONCURRENCY: '2', SLOT_LEASE_MS: '1000' });
  const first = await spawnDispatcher(h, 'crash-1');
  t.teardown(() => first.child.exitCode === null && first.child.kill('SIGKILL'));
  const token = await h.token('kim');

  const answers: Record<string, Promise<AgentAnswer>> = {
    plain: h.agent.execute('sleep', { ms: 3_000 }, { token, requestId: 'k-plain', timeoutMs: 60_000 }),
    idem: h.agent.execute(
      'sleep_idempotent',
      { ms: 3_000 },
      { token, requestId: 'k-idem', timeoutMs: 60_000 },
    ),
  };
  // Both are running in the first process (recorded as executing) when it is killed.
  await eventually(
    async () => runnersOf(await h.events('kim')).length === 2,
    30_000,
    'both tools to be running',
  );
  first.child.kill('SIGKILL');
  await first.exited;

  const second = await spawnDispatcher(h, 'crash-2');
  t.teardown(() => second.child.exitCode === null && second.child.kill('SIGKILL'));
  const plain = await answers.plain;
  const idem = await answers.idem;
  t.match(
    plain,
    { status: 'failed', error: { code: 'INTERRUPTED', message: /not idempotent/ } },
    'the non-idempotent tool is not run twice',
  );
  t.match(
    idem,
    { status: 'completed', result: { slept: 3_000 } },
    'the idempotent tool is run again and completes',
  );

  const events = await h.events('kim');
  const of = (id: string) => events.filter((e) => e.metadata.requestId === id);
  t.strictSame(
    of('k-plain').map((e) => e.type),
    ['ToolRequested', 'ToolExecuting', 'ToolFailed'],
    'plain: one terminal event',
  );
  t.strictSame(
    of('k-idem').map((e) =>
      e.type === 'ToolExecuting' ? `${e.type}:${e.data.attempt}:${e.data.runner}` : e.type,
    ),
    ['ToolRequested', 'ToolExecuting:1:crash-1', 'ToolExecuting:2:crash-2', 'ToolCompleted'],
    'idempotent: a second attempt by the new process, one terminal event',
  );
  t.equal(verifyChain(events), null);
  const again = await h.agent.execute(
    'sleep',
    { ms: 3_000 },
    { token, requestId: 'k-plain', timeoutMs: 30_000 },
  );
  t.strictSame(again, plain, 'a retry gets the same INTERRUPTED answer, no new run');
  // The dead process's slots lapsed with their leases, not after the tools' timeouts (15 s).
  t.match(
    await h.agent.execute('echo', { text: 'after' }, { token, requestId: 'k-after', timeoutMs: 30_000 }),
    { status: 'completed' },
    'kim runs again at once: the dead process holds none of her slots',
  );
  second.child.kill('SIGTERM');
  t.equal(await second.exited, 0);
});
