import t from 'tap';
import { freePort } from '../test/support/ports.ts';
import { pollUntil } from '../test/support/processes.ts';
import { launchStack } from './launcher.ts';

/**
 * The launcher as `npm start` runs it (restart on): a service that crashes is started again; one
 * the stack stops itself is not. The console stands in for any service (it needs no other server).
 */
t.test('a crashed or killed service is started again; one the stack stops is not', async (t) => {
  const port = await freePort();
  const stack = await launchStack({
    services: ['console'],
    env: { LOG_LEVEL: 'warn' },
    ports: { console: port },
    restart: true,
    readyTimeoutMs: 120_000,
  });
  t.teardown(() => stack.stop());
  const first = stack.services.console.process()!.pid!;

  /** The pid of the console's next process once it serves, after `killed` was killed with `signal`. */
  const restartedAfter = (killed: number, signal: NodeJS.Signals) => {
    process.kill(killed, signal);
    return pollUntil(
      `the console started again and ready after a ${signal}`,
      async () => {
        const pid = stack.services.console.process()?.pid;
        if (pid === undefined || pid === killed) return undefined;
        const res = await fetch(`${stack.services.console.url}/health/ready`);
        return res.ok ? pid : undefined;
      },
      180_000,
    );
  };

  // From outside, as an OOM killer or a person would.
  const second = await restartedAfter(first, 'SIGKILL');
  t.not(second, first, 'a new process serves');
  t.ok(
    stack.logs.some((l) => l.line.startsWith('[restarting in')),
    'the log says it restarts',
  );

  // A plain `kill` (SIGTERM) from someone else: the service stops cleanly (code 0), and is started
  // again all the same (an outside review found the gateway left down so).
  await restartedAfter(second, 'SIGTERM');
  t.ok(
    stack.logs.some((l) => l.line === '[process exited: code 0]'),
    'it had exited cleanly',
  );

  const restartsBefore = stack.logs.filter((l) => l.line.startsWith('[restarting in')).length;
  await stack.kill('console');
  // A restart is scheduled (and logged) by the exit handler, which has run once kill() resolves.
  t.equal(
    stack.logs.filter((l) => l.line.startsWith('[restarting in')).length,
    restartsBefore,
    'killed by the stack: no restart was scheduled',
  );
  t.equal(stack.services.console.process(), null, 'it is down');
});
