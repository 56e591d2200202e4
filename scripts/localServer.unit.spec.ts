/**
 * A server of `npm start` kept running (localServer.ts), with a small Node.js TCP server standing in
 * for nats-server, PostgreSQL or Redis: killed, it is started again; stopped, it stays stopped; one
 * that cannot start says why.
 */
import t from 'tap';
import { freePort } from '../test/support/ports.ts';
import { accepts, startSupervised, type ServerSpec } from './localServer.ts';

const serverOn = (port: number): ServerSpec['command'] => ({
  command: process.execPath,
  args: ['-e', `require('node:net').createServer((s) => s.end()).listen(${port}, '127.0.0.1')`],
});

/** The stand-in kept running on `port`, its notices in `notices`; `more` for the rest of its spec. */
const standIn = (port: number, notices: string[], more: Partial<ServerSpec> = {}) =>
  startSupervised({
    what: 'stand-in',
    command: serverOn(port),
    isUp: () => accepts(port),
    onLine: () => undefined,
    onNotice: (line) => notices.push(line),
    ...more,
  });

async function until(what: string, condition: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; !(await condition()); i++) {
    if (i > 600) throw new Error(`not within a minute: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const exited = (pid: number) => {
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
};

t.test('a server killed is started again, and one stopped stays stopped', async (t) => {
  const port = await freePort();
  const notices: string[] = [];
  let cleanups = 0;
  const server = await standIn(port, notices, { cleanup: async () => void cleanups++, firstDelayMs: 50 });
  t.teardown(() => server.stop());
  t.ok(await accepts(port), 'it accepts connections once started');
  for (const round of [1, 2]) {
    const pid = server.pid!;
    process.kill(pid, 'SIGKILL');
    await until(
      'it runs again',
      () => notices.filter((n) => n.includes('is running again')).length === round,
    );
    t.not(server.pid, pid, `killed (${round}): a new process runs`);
    t.ok(await accepts(port), `killed (${round}): it accepts connections again`);
  }
  t.match(notices[0], /^stand-in exited \(signal SIGKILL\); starting it again in 50 ms$/, 'the exit is told');
  t.match(notices[1], /^stand-in is running again \(down \d+(\.\d)? m?s\)$/, 'and its start again');
  t.match(notices[2], /in 100 ms$/, 'the pause doubles while it keeps failing soon after a start');

  const pid = server.pid!;
  await server.stop();
  t.ok(exited(pid), 'stop() ends it');
  t.equal(cleanups, 1, 'and cleans up after it');
  // Its exit was seen before stop() resolved: a start again would have been told by now.
  t.notMatch(notices.at(-1), /exited/, 'nothing starts it again');
  t.notOk(await accepts(port), 'nothing listens any more');
});

t.test('stopped while it waits to start again, it is not started', async (t) => {
  const port = await freePort();
  const notices: string[] = [];
  // An hour: past the test's timeout, so a stop() that waited it out fails the test.
  const server = await standIn(port, notices, { firstDelayMs: 3_600_000 });
  process.kill(server.pid!, 'SIGKILL');
  await until('the exit is told', () => notices.length === 1);
  await server.stop();
  t.pass('stop() does not wait out the pause');
  t.equal(server.pid, undefined, 'no process runs');
  t.notOk(await accepts(port), 'nothing listens');
});

t.test('a server that stops at its first start rejects with what it printed', async (t) => {
  const port = await freePort();
  await t.rejects(
    startSupervised({
      what: 'stand-in',
      command: {
        command: process.execPath,
        args: ['-e', 'console.error("no such config"); process.exit(3)'],
      },
      isUp: () => accepts(port),
      onLine: () => undefined,
      onNotice: () => undefined,
    }),
    /stand-in stopped at start \(code 3\):\nno such config/,
  );
});

t.test(
  'one that keeps failing after a kill is tried again with a doubling pause, with its reason',
  async (t) => {
    const port = await freePort();
    const notices: string[] = [];
    let starts = 0;
    const good = serverOn(port);
    const spec: ServerSpec = {
      what: 'stand-in',
      // Started through a getter: the first start works, the next two fail, the fourth works.
      get command() {
        starts++;
        return starts === 1 || starts >= 4
          ? good
          : { command: process.execPath, args: ['-e', 'console.error("port busy"); process.exit(1)'] };
      },
      isUp: () => accepts(port),
      onLine: () => undefined,
      onNotice: (line) => notices.push(line),
      firstDelayMs: 20,
    };
    const server = await startSupervised(spec);
    t.teardown(() => server.stop());
    process.kill(server.pid!, 'SIGKILL');
    await until('it runs again', () => notices.some((n) => n.includes('is running again')));
    t.equal(starts, 4, 'started until a start worked');
    t.match(notices, [
      /exited \(signal SIGKILL\); starting it again in 20 ms/,
      /exited \(stand-in stopped at start \(code 1\): \/ port busy\); starting it again in 40 ms/,
      /exited \(.*port busy\); starting it again in 80 ms/,
      /is running again/,
    ]);
  },
);

t.test('a command that cannot even be spawned is tried again, not a crash of npm start', async (t) => {
  const port = await freePort();
  const notices: string[] = [];
  let starts = 0;
  const good = serverOn(port);
  const server = await startSupervised({
    what: 'stand-in',
    // As when a package upgrade removed the binary for a moment: the second start finds nothing.
    get command() {
      starts++;
      return starts === 2 ? { command: '/nonexistent/stand-in', args: [] } : good;
    },
    isUp: () => accepts(port),
    onLine: () => undefined,
    onNotice: (line) => notices.push(line),
    firstDelayMs: 20,
  });
  t.teardown(() => server.stop());
  process.kill(server.pid!, 'SIGKILL');
  await until('it runs again', () => notices.some((n) => n.includes('is running again')));
  t.match(notices[1], /exited \(stand-in could not be started \(\/nonexistent\/stand-in\): spawn .*ENOENT\)/);
  t.equal(starts, 3);
});

t.test('held (the stack stops), an exit is no crash; every stop() waits for the end', async (t) => {
  const port = await freePort();
  const notices: string[] = [];
  let cleanups = 0;
  const server = await standIn(port, notices, { cleanup: async () => void cleanups++, firstDelayMs: 20 });
  const pid = server.pid!;
  server.hold();
  // As a terminal's Ctrl-C: the server ends on its own signal before the stack stops it.
  process.kill(pid, 'SIGINT');
  // Reaped means its exit was handled (Node reaps and runs the exit handlers in one callback),
  // and a crash is told at once, before the pause: had it been taken for one, it would show.
  await until('it has ended', () => exited(pid));
  t.same(notices, [], 'nothing is told, nothing started again');
  t.notOk(await accepts(port));

  const second = await standIn(port, [], {
    // A cleanup that takes a moment: a second stop() must wait for it too.
    cleanup: async () => {
      await new Promise((r) => setImmediate(r));
      cleanups++;
    },
  });
  const secondPid = second.pid!;
  const first = second.stop();
  await second.stop();
  t.ok(exited(secondPid), 'a second stop() resolves only once the process has ended');
  t.equal(cleanups, 1, 'and cleaned up, once');
  await first;
  await server.stop();
  t.equal(cleanups, 2, 'a held server is cleaned up by its stop()');
});

t.test('the check that a server accepts connections closes without a reset', async (t) => {
  // nats-server greets each connection (INFO) and, with TLS required, waits for a handshake: a
  // check that closed with that greeting unread sent a reset, which nats-server logged on every
  // `npm start` as "[ERR] ... TLS handshake error: ... connection reset by peer".
  const { createServer } = await import('node:net');
  const ends: string[] = [];
  const server = createServer((s) => {
    s.write('INFO {"tls_required":true}\r\n');
    s.on('end', () => (ends.push('end'), s.end()));
    s.on('error', (e: NodeJS.ErrnoException) => ends.push(e.code ?? e.message));
  });
  const port = await freePort();
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  t.teardown(() => new Promise((r) => server.close(r)));
  for (let i = 0; i < 5; i++) t.ok(await accepts(port), `it accepts (${i + 1})`);
  await until('every check has closed', () => ends.length === 5);
  t.same(ends, ['end', 'end', 'end', 'end', 'end'], 'each closed with an end, none with a reset');
});
