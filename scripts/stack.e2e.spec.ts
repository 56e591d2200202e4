/**
 * `npm start` as a new user meets it, pointed at the test's own servers (NATS_URL, DATABASE_URL,
 * REDIS_URL) so that it starts only the services: it says it is running, and the lines it prints
 * for trying progress and cancellation work when pasted into a shell. Against a NATS port where
 * nothing listens, or a NATS without JetStream, it stops with the reason a service gave. With
 * servers of its own, it keeps what it stored across a restart, and starts a server that was
 * killed again.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { connect as connectPlainNats, nkeyAuthenticator } from '@nats-io/transport-node';
import { createAgentClient } from '../lib/clients/agent.ts';
import { connectNats } from '../lib/nats.ts';
import { freePort, waitForPort } from '../test/support/ports.ts';
import { createTestDatabase } from '../test/support/postgres.ts';
import { startNats, startRedis } from '../test/support/processes.ts';
import { natsServerBinary, parseEnv, SERVER_USER } from './local.ts';

t.setTimeout(360_000); // four stacks, two with servers of their own

const ROOT = fileURLToPath(new URL('../', import.meta.url));

interface Started {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

type Teardown = { teardown(fn: () => void): void };

async function npmStart(t: Teardown, env: Record<string, string>): Promise<Started> {
  const ports = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()]);
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/stack.ts'], {
    cwd: ROOT,
    env: {
      PATH: process.env['PATH'] ?? '',
      DISPATCHER_PORT: String(ports[0]),
      PROJECTOR_PORT: String(ports[1]),
      NOTIFIER_PORT: String(ports[2]),
      AUDITOR_PORT: String(ports[3]),
      GATEWAY_PORT: String(ports[4]),
      CONSOLE_PORT: String(ports[5]),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group, as a terminal gives it: Ctrl-C (ctrlC) reaches every process of it.
    detached: true,
  });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, 'SIGKILL');
  });
  return { child, output: () => output, exited };
}

/** Ctrl-C in its terminal: SIGINT to every process of the group, servers included. */
const ctrlC = (started: Started) => process.kill(-started.child.pid!, 'SIGINT');

async function until(what: string, condition: () => boolean, started: Started): Promise<void> {
  while (!condition()) {
    if (started.child.exitCode !== null)
      throw new Error(`npm start stopped before ${what}:\n${started.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The pid of the process named `comm` (its executable's name) whose parent is `parent`. */
async function childNamed(parent: number, comm: string): Promise<number> {
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    // pid (comm) state ppid ...
    const m = /^\d+ \((.*)\) \S+ (\d+)/.exec(stat);
    if (m && m[1] === comm && Number(m[2]) === parent) return Number(pid);
  }
  throw new Error(`no ${comm} runs under ${parent}`);
}

/** Runs a printed command line (and its continuation lines) in a shell; resolves with its output. */
function sh(command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', command], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.once('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${command} exited ${code}`)),
    );
  });
}

/** The printed command that follows the line containing `title` (a curl line and its `\` continuation). */
function commandAfter(output: string, title: string, index = 0): string {
  const lines = output.split('\n');
  let at = lines.findIndex((l) => l.includes(title));
  if (at < 0) throw new Error(`npm start did not print "${title}"`);
  const commands: string[] = [];
  for (at++; at < lines.length && lines[at]!.startsWith('  '); at++) {
    const line = lines[at]!.trim();
    if (line.startsWith('curl')) commands.push(line);
    else commands[commands.length - 1] += `\n${line}`;
  }
  return commands[index]!;
}

t.test('npm start prints lines that show progress and cancellation', async (t) => {
  const [nats, redis, db] = await Promise.all([startNats(t), startRedis(t), createTestDatabase(t)]);
  const s = await npmStart(t, { NATS_URL: nats.url, REDIS_URL: redis.url, DATABASE_URL: db.url });
  await until('it was running', () => s.output().includes('Ctrl-C stops everything.'), s);
  const out = s.output();
  t.match(out, /Live page for user "demo": http:\/\/127\.0\.0\.1:\d+\/#token=\S+/);
  t.match(out, /Operator console: http:\/\/127\.0\.0\.1:\d+\/#token=<an operator token>/);
  // The MCP command names this stack's gateway (its port is not the default here).
  const gateway = /MCP clients \(Streamable HTTP, docs\/mcp\.md\) at (\S+?); /.exec(out)?.[1];
  t.ok(gateway, 'the gateway is named');
  t.ok(out.includes(`MCP_URL=${gateway} TOOLBUS_TOKEN=`), 'the MCP command is for this stack');
  // The dispatcher's GET /executions names this stack's projector (its port is not the default).
  const urlOf = (name: string) => new RegExp(`^  ${name} +(http://\\S+)`, 'm').exec(out)?.[1];
  const lists = await fetch(`${urlOf('dispatcher')}/executions`);
  t.equal(lists.status, 404);
  t.match(
    ((await lists.json()) as { error: { message: string } }).error.message,
    `GET ${urlOf('projector')}/executions `,
    "the lists are at this stack's projector",
  );

  const countdown = commandAfter(out, 'Progress (watch it on the live page)');
  t.match(countdown, /"tool":"countdown"/);
  t.match(
    JSON.parse(await sh(countdown)),
    { status: 'completed', result: { counted: 20 } },
    'the countdown ran',
  );

  const wait = commandAfter(out, 'Cancellation:', 0);
  const cancel = commandAfter(out, 'Cancellation:', 1);
  const waited = sh(wait);
  // The cancel line may come before the wait has started: it answers so, and is tried again.
  let cancelled: { cancelled: boolean; status: string };
  do {
    cancelled = JSON.parse(await sh(cancel)) as typeof cancelled;
    if (!cancelled.cancelled) await new Promise((r) => setTimeout(r, 200));
  } while (!cancelled.cancelled);
  t.match(
    JSON.parse(await waited),
    { status: 'failed', error: { code: 'CANCELLED' } },
    'the wait was cancelled',
  );

  // The MCP gateway's curl line: one tools/call, answered as an SSE event with the structured result.
  const mcp = commandAfter(out, 'or with curl (one stateless JSON-RPC request)');
  const event = (await sh(mcp)).split('\n').find((l) => l.startsWith('data: '));
  t.match(
    JSON.parse(event!.slice(6)),
    { result: { structuredContent: { rowCount: 5 } } },
    'the MCP call ran',
  );

  s.child.kill('SIGINT');
  t.equal(await s.exited, 0, 'Ctrl-C stops everything cleanly');
  t.match(s.output(), /stopped\./);
});

t.test('against a closed NATS port npm start stops with the reason', async (t) => {
  const [redis, db] = await Promise.all([startRedis(t), createTestDatabase(t)]);
  const s = await npmStart(t, {
    NATS_URL: `nats://127.0.0.1:${await freePort()}`,
    REDIS_URL: redis.url,
    DATABASE_URL: db.url,
  });
  t.not(await s.exited, 0);
  // Whichever service meets it first says so, in its own words.
  t.match(
    s.output(),
    /\w+ exited before it was ready[^\n]*\n\w+ said:\n.*connection refused/,
    'the reason is printed',
  );
});

t.test('against a NATS without JetStream npm start stops with the reason', async (t) => {
  const [redis, db] = await Promise.all([startRedis(t), createTestDatabase(t)]);
  const port = await freePort();
  const nats = spawn(
    process.env['NATS_SERVER_BIN'] ?? 'nats-server',
    ['-a', '127.0.0.1', '-p', String(port)],
    {
      stdio: 'ignore',
    },
  );
  t.teardown(() => {
    nats.kill('SIGKILL');
  });
  await waitForPort(port);
  const s = await npmStart(t, {
    NATS_URL: `nats://127.0.0.1:${port}`,
    REDIS_URL: redis.url,
    DATABASE_URL: db.url,
  });
  t.not(await s.exited, 0);
  t.match(s.output(), /\w+ said:\n.*jetstream/i, 'the reason names JetStream');
});

t.test(
  'npm start with servers of its own, stopped and started again, starts with what it kept; a server killed is started again',
  async (t) => {
    // As a new user runs it twice: its own NATS, PostgreSQL and Redis in one folder (as root, its
    // PostgreSQL runs as the system user toolbus, which must still reach its data the second time).
    const dir = t.testdir();
    const [natsPort, postgresPort, redisPort] = await Promise.all([freePort(), freePort(), freePort()]);
    const env = {
      TOOLBUS_DIR: dir,
      TOOLBUS_NATS_PORT: String(natsPort),
      TOOLBUS_POSTGRES_PORT: String(postgresPort),
      TOOLBUS_REDIS_PORT: String(redisPort),
    };
    // The first start runs its servers through scripts that note their command lines.
    const argvLog = join(dir, 'argv.log');
    const spy = async (name: string, real: string) => {
      const path = join(dir, `${name}-spy.sh`);
      await writeFile(path, `#!/bin/sh\nprintf '%s\\n' "$*" >> '${argvLog}'\nexec ${real} "$@"\n`, {
        mode: 0o755,
      });
      return path;
    };
    const first = await npmStart(t, {
      ...env,
      REDIS_SERVER_BIN: await spy('redis', 'redis-server'),
      NATS_SERVER_BIN: await spy('nats', natsServerBinary()),
    });
    await until('it was running', () => first.output().includes('Ctrl-C stops everything.'), first);
    const run = commandAfter(first.output(), 'Run a tool as "demo":');
    const ran = JSON.parse(await sh(run)) as { status: string; executionId: string };
    t.equal(ran.status, 'completed', 'a tool ran');
    // Every local user can read every process's command line (a server that rewrites its process
    // title still shows it while it starts): no server may be given a secret there.
    const secrets = Object.values(parseEnv(await readFile(join(dir, 'secrets.env'), 'utf8')));
    t.ok(secrets.length >= 3, 'the stack generated its secrets');
    const lines = [...(await readFile(argvLog, 'utf8')).split('\n').filter(Boolean)];
    t.equal(lines.length, 2, 'nats-server and redis-server started through the spies');
    for (const pid of await readdir('/proc')) {
      if (/^\d+$/.test(pid)) lines.push(await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => ''));
    }
    const leaks = lines.filter((line) => secrets.some((secret) => line.includes(secret)));
    t.strictSame(leaks, [], 'no command line, at start or now, holds a generated secret');
    // Its PostgreSQL and Redis take no TCP connection (no local process can fill their slots
    // without the password): only their sockets, in directories no other user may enter. (The
    // dispatcher is ready only once Redis answers: the tool that ran went through it.)
    const accepts = (port: number) =>
      new Promise<boolean>((resolve) => {
        const socket = connect(port, '127.0.0.1');
        socket.once('connect', () => (socket.destroy(), resolve(true)));
        socket.once('error', () => resolve(false));
      });
    t.notOk(await accepts(postgresPort), 'nothing listens on the PostgreSQL port over TCP');
    t.notOk(await accepts(redisPort), 'nor on the Redis port (it too has a private socket)');
    const socketDir = (await readFile(join(dir, 'postgres', 'socket-dir'), 'utf8')).trim();
    t.equal((await stat(socketDir)).mode & 0o777, 0o700, 'the socket directory is private');
    // As root its PostgreSQL runs as a user of its own: not as `postgres`, whom any local user
    // becomes through a PostgreSQL that trusts local connections (COPY ... TO PROGRAM).
    const asRoot = process.getuid?.() === 0;
    const uidOf = (user: string) => Number(execFileSync('id', ['-u', user]).toString().trim());
    if (asRoot) {
      t.not(uidOf(SERVER_USER), uidOf('postgres'), 'the server user is not postgres');
      t.equal((await stat(socketDir)).uid, uidOf(SERVER_USER), 'the socket directory is the server user’s');
      t.equal((await stat(join(dir, 'postgres', 'data'))).uid, uidOf(SERVER_USER), 'and so is the data');
    }
    const firstBeforeCtrlC = first.output().length;
    ctrlC(first);
    t.equal(await first.exited, 0, 'the first stopped cleanly');
    t.notMatch(
      first.output().slice(firstBeforeCtrlC),
      /starting it again/,
      'no server it stopped was taken for crashed',
    );

    // A cluster an older Toolbus made, owned by postgres: the next start hands it to its own user.
    if (asRoot) execFileSync('chown', ['-R', 'postgres:postgres', join(dir, 'postgres')]);
    const second = await npmStart(t, env);
    await until('it was running again', () => second.output().includes('Ctrl-C stops everything.'), second);
    const dispatcher = /dispatcher\s+(http:\/\/\S+)/.exec(second.output())![1]!;
    const token = /authorization: Bearer (\S+)'/.exec(run)![1]!;
    const kept = await fetch(`${dispatcher}/executions/${ran.executionId}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    t.match(
      await kept.json(),
      { status: 'completed', executionId: ran.executionId },
      'the first run is kept',
    );
    if (asRoot) {
      const data = join(dir, 'postgres', 'data');
      t.equal((await stat(data)).uid, uidOf(SERVER_USER), 'the older cluster was handed to the server user');
    }
    // The audit CLI and the rebuild as the docs give them find this stack's database by themselves.
    const tool = (...args: string[]) =>
      new Promise<{ code: number | null; out: string }>((resolve) => {
        const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
          cwd: ROOT,
          env: { PATH: process.env['PATH'] ?? '', ...env },
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        let out = '';
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.once('exit', (code) => resolve({ code, out }));
      });
    const audit = await tool('scripts/audit.ts', 'verify', 'demo');
    t.equal(audit.code, 0, 'npm run audit -- verify demo: the history verifies');
    t.match(audit.out, /^OK user-demo: 3 events/m, "it read the stack's history");
    const rebuild = await tool('scripts/rebuild.ts');
    t.equal(rebuild.code, 0, 'npm run rebuild');
    t.match(
      rebuild.out,
      /^rebuilt the read models from 3 events in \d+\.\d s and swapped them in at position \S+$/m,
      "it re-projected the stack's events, and says so in a line",
    );
    const rebuildJson = await tool('scripts/rebuild.ts', '--json');
    t.match(JSON.parse(rebuildJson.out) as unknown, { events: 3 }, 'npm run rebuild -- --json');

    // An agent connects as the lines say: over TLS, trusting the stack's CA; without it, it cannot.
    const agentLine = /NATS_URL=(\S+) NATS_NKEY_SEED_FILE=(\S+) NATS_TLS_CA=(\S+)/.exec(second.output());
    t.ok(agentLine, 'the agent line names the CA');
    const [, natsUrl, seedFile, caFile] = agentLine!;
    const nkeySeed = (await readFile(seedFile!, 'utf8')).trim();
    const nc = await connectNats(natsUrl!, 'stack-test-agent', { nkeySeed, tls: { caFile: caFile! } });
    t.match(
      await createAgentClient(nc).execute('dataset_stats', { columns: { x: [1, 2] } }, { token }),
      { status: 'completed' },
      'an agent as printed runs a tool',
    );
    await nc.close();
    await t.rejects(
      connectPlainNats({
        servers: natsUrl!,
        authenticator: nkeyAuthenticator(new TextEncoder().encode(nkeySeed)),
        reconnect: false,
        timeout: 10_000,
      }),
      /certificate/,
      "a client that does not trust the stack's CA does not connect",
    );
    // Each of its servers killed in turn is started again, and a tool runs again after each.
    const runAgain = commandAfter(second.output(), 'Run a tool as "demo":');
    for (const [server, name] of [
      ['nats-server', 'nats-server'],
      ['redis-server', 'Redis'],
      ['postgres', 'PostgreSQL'],
    ] as const) {
      const pid = await childNamed(second.child.pid!, server);
      const before = second.output().length;
      process.kill(pid, 'SIGKILL');
      await until(
        `${name} was running again`,
        () => second.output().slice(before).includes(`${name} is running again`),
        second,
      );
      t.not(await childNamed(second.child.pid!, server), pid, `${name} killed: a new one runs`);
      let answer: { status?: string } = {};
      for (let attempt = 1; answer.status !== 'completed'; attempt++) {
        // The services notice and reconnect on their own (an OVERLOADED or 503 answer meanwhile).
        if (attempt > 1) await new Promise((r) => setTimeout(r, 500));
        if (attempt > 240) throw new Error(`no tool ran after ${name} was killed: ${JSON.stringify(answer)}`);
        answer = await sh(runAgain)
          .then((out) => JSON.parse(out) as { status?: string })
          .catch(() => ({}));
      }
      t.pass(`a tool runs again after ${name} was killed`);
    }
    const beforeCtrlC = second.output().length;
    ctrlC(second);
    t.equal(await second.exited, 0, 'the second stopped cleanly');
    t.notMatch(second.output().slice(beforeCtrlC), /starting it again/, 'nor by the second');
  },
);
