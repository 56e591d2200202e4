import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import t from 'tap';

/** Running: it exists and is not a zombie (an exited process its new parent has not reaped yet). */
const alive = (pid: number) => {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

t.test('a test process that exits before its teardown leaves none of its servers running', async (t) => {
  // A child test process starts Redis and NATS with no teardown, prints their pids, then fails.
  const script = `
    import { startNats, startRedis } from './test/support/processes.ts';
    const [redis, nats] = [await startRedis(), await startNats()];
    console.log(JSON.stringify([redis.pid(), nats.pid()]));
    process.exit(1);
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise((resolve) => child.once('exit', resolve));
  t.equal(code, 1, 'the child failed');
  const pids = JSON.parse(out.trim()) as number[];
  t.equal(pids.length, 2);
  // Should this fail, the servers go with the test.
  t.teardown(() => pids.filter(alive).forEach((pid) => process.kill(pid, 'SIGKILL')));
  // Killed with SIGKILL on the child's exit: gone at once, or a moment later on a busy machine.
  for (let waited = 0; pids.some(alive) && waited < 20_000; waited += 50)
    await new Promise((r) => setTimeout(r, 50));
  t.strictSame(
    pids.filter(alive),
    [],
    'redis-server and nats-server were killed when their test process exited',
  );
});
