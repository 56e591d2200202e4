/**
 * Existing MCP servers behind Toolbus, end to end: the MCP tool provider runs as its own process
 * with its own NATS identity (granted only its namespaces), in front of real third-party MCP
 * servers from the npm registry (`@modelcontextprotocol/server-everything` and
 * `server-filesystem`, over stdio) and of broken ones; agents call their tools through the real
 * dispatcher, and every user's stream is checked by the auditor's verification afterwards.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import t from 'tap';
import type { AgentAnswer } from '../../contracts/index.ts';
import type { InterimAnswer } from '../../lib/clients/agent.ts';
import { newUserId, terminal, waitUntil } from '../../test/acceptance/support.ts';
import { freePort, waitForPort } from '../../test/support/ports.ts';
import { startTestStack } from '../../test/support/stack.ts';
import { verifyHistory } from '../auditor/verify.ts';

const require = createRequire(import.meta.url);
const everythingBin = require.resolve('@modelcontextprotocol/server-everything/dist/index.js');
const filesystemBin = require.resolve('@modelcontextprotocol/server-filesystem/dist/index.js');
const node = process.execPath;

const quirkyServer = fileURLToPath(new URL('./fixtures/quirky-server.ts', import.meta.url));

const NAMESPACES = [
  'everything',
  'fs',
  'remote',
  'victim',
  'rerun',
  'broken',
  'garbage',
  'hang',
  'quirky',
  'lazy',
];
// Its tools are destructive unless configured, so by default each call would wait for an approver
// (docs/approval.md): this test is about serving them, so the operator turns that off.
const s = await startTestStack(t, { mcpNamespaces: NAMESPACES, env: { APPROVAL_DESTRUCTIVE: 'off' } });

// server-everything over Streamable HTTP, on a port of the test's.
const httpPort = await freePort();
const httpServer = spawn(node, [everythingBin, 'streamableHttp'], {
  env: { ...process.env, PORT: String(httpPort) },
  stdio: 'ignore',
});
t.teardown(() => void httpServer.kill('SIGKILL'));
await waitForPort(httpPort, 60_000);
const work = await mkdtemp(join(tmpdir(), 'toolbus-mcp-'));
t.teardown(() => rm(work, { recursive: true, force: true }));
const files = join(work, 'files');
await mkdir(files);
await writeFile(join(files, 'notes.txt'), 'hello from a file\n');

/** A stdio server started through `sh`, which writes its pid first: the test kills it mid-call. */
const killable = (pidFile: string) => ({
  command: 'sh',
  args: ['-c', `echo $$ > '${pidFile}'; exec '${node}' '${everythingBin}' stdio`],
});

const config = {
  // Another part of Toolbus owns this key; the provider must leave it alone.
  tools: [],
  mcpServers: {
    everything: {
      command: node,
      args: [everythingBin, 'stdio'],
      toolbus: { timeoutMs: 60_000, tools: { echo: { idempotent: true, destructive: false } } },
    },
    fs: {
      command: node,
      args: [filesystemBin, files],
      toolbus: { roles: ['files'], tools: { write_file: { roles: ['files', 'files_write'] } } },
    },
    remote: { url: `http://127.0.0.1:${httpPort}/mcp` },
    quirky: {
      command: node,
      args: ['--import', 'tsx', quirkyServer],
      toolbus: { maxNotificationsPerSecond: 100 },
    },
    lazy: {
      command: node,
      args: ['--import', 'tsx', quirkyServer],
      toolbus: { lifecycle: 'on-demand', idleMs: 1_000 },
    },
    victim: { ...killable(join(work, 'victim.pid')), toolbus: { timeoutMs: 60_000 } },
    rerun: {
      ...killable(join(work, 'rerun.pid')),
      toolbus: { timeoutMs: 60_000, tools: { 'trigger-long-running-operation': { idempotent: true } } },
    },
    broken: { command: node, args: ['-e', "process.stderr.write('no config for me\\n'); process.exit(3)"] },
    garbage: {
      command: node,
      // JSON, but not JSON-RPC (lines that are not JSON at all the SDK skips without a word).
      args: ['-e', "setInterval(() => console.log(JSON.stringify({ hello: 'world' })), 20)"],
      toolbus: { startTimeoutMs: 1_000 },
    },
    hang: { command: node, args: ['-e', 'setInterval(() => {}, 1000)'], toolbus: { startTimeoutMs: 1_000 } },
  },
};
const configFile = join(work, 'toolbus.json');
await writeFile(configFile, JSON.stringify(config, null, 2));

const providerLog: string[] = [];
const provider = spawn(node, ['--import', 'tsx', 'services/mcp-tools/main.ts'], {
  env: {
    ...process.env,
    ...s.env,
    NATS_NKEY_SEED: s.nats.identities.mcpTools.seed,
    TOOLBUS_CONFIG: configFile,
    WORKER_ID: 'mcp-test',
    LOG_LEVEL: 'debug',
  },
  stdio: ['ignore', 'pipe', 'pipe'],
});
for (const stream of [provider.stdout, provider.stderr])
  createInterface({ input: stream }).on('line', (line) => providerLog.push(line));
t.teardown(async () => {
  if (provider.exitCode === null) {
    const exited = new Promise((r) => provider.once('exit', r));
    provider.kill('SIGTERM');
    await exited;
  }
});

const toolNames = async (): Promise<string[]> => {
  const res = await fetch(`${s.url('dispatcher')}/tools`);
  const body = (await res.json()) as { tools: { name: string }[] };
  return body.tools.map((tool) => tool.name);
};
const manifestOf = async (name: string) => {
  const res = await fetch(`${s.url('dispatcher')}/tools`);
  const body = (await res.json()) as { tools: Record<string, unknown>[] };
  return body.tools.find((tool) => tool['name'] === name);
};
/** Whether the provider logged a line matching `pattern` (its JSON's escaped quotes read as quotes). */
const loggedCount = (pattern: RegExp) =>
  providerLog.filter((line) => pattern.test(line.replaceAll('\\"', '"'))).length;
const logged = (pattern: RegExp) => loggedCount(pattern) > 0;

await waitUntil(
  'the MCP servers’ tools at the dispatcher',
  async () => {
    const names = await toolNames();
    return ['everything.echo', 'fs.read_text_file', 'victim.echo', 'rerun.echo'].every((n) =>
      names.includes(n),
    );
  },
  120_000,
);

const users: string[] = [];
const user = async (prefix: string, roles: string[] = ['user']) => {
  const userId = newUserId(prefix);
  users.push(userId);
  return { userId, token: await s.token(userId, roles) };
};
const failure = (answer: AgentAnswer) => {
  const end = terminal(answer);
  return end.status === 'failed' ? end.error : undefined;
};
const result = (answer: AgentAnswer) => {
  const end = terminal(answer);
  return end.status === 'completed' ? end.result : end.error;
};

t.test('server-everything over stdio: echo and get-sum', async (t) => {
  const { token } = await user('echo');
  t.same(
    result(await s.agent.execute('everything.echo', { message: 'hi there' }, { token })),
    { text: 'Echo: hi there', content: [{ type: 'text', text: 'Echo: hi there' }] },
    'the text content, in the documented shape',
  );
  t.same(result(await s.agent.execute('everything.get-sum', { a: 2, b: 40 }, { token })), {
    text: 'The sum of 2 and 40 is 42.',
    content: [{ type: 'text', text: 'The sum of 2 and 40 is 42.' }],
  });
  const bad = failure(await s.agent.execute('everything.get-sum', { a: 'two' }, { token }));
  t.equal(bad?.code, 'VALIDATION', 'arguments are checked against the server’s input schema first');

  const echo = await manifestOf('everything.echo');
  t.match(echo, { idempotent: true, annotations: { destructiveHint: false, idempotentHint: true } });
  const sum = await manifestOf('everything.get-sum');
  t.match(
    sum,
    { idempotent: false, annotations: { destructiveHint: true, idempotentHint: false } },
    'the server calls get-sum idempotent and not destructive; without configuration that is not believed',
  );
});

t.test('a tool with an output schema returns its structured content, checked', async (t) => {
  const { token } = await user('structured');
  const weather = result(
    await s.agent.execute('everything.get-structured-content', { location: 'Chicago' }, { token }),
  );
  t.match(weather, { temperature: Number, conditions: String, humidity: Number });
});

t.test('a long-running operation reports progress, then its result', async (t) => {
  const { token } = await user('progress');
  const interim: InterimAnswer[] = [];
  const answer = await s.agent.execute(
    'everything.trigger-long-running-operation',
    { duration: 1, steps: 4 },
    { token, onProgress: (a) => interim.push(a) },
  );
  t.match(result(answer), { text: /Long running operation completed/ });
  const progress = interim.filter((a) => a.status === 'progress');
  t.ok(progress.length >= 1, `progress reached the agent (${progress.length} updates)`);
  t.ok(
    progress.every((p) => p.fraction > 0 && p.fraction <= 1),
    'as fractions of the total the server gave',
  );
});

t.test('a cancel reaches the MCP server mid-way', async (t) => {
  const { token } = await user('cancel');
  const requestId = `cancel-${Date.now()}`;
  let progressed!: () => void;
  const firstProgress = new Promise<void>((r) => (progressed = r));
  const running = s.agent.execute(
    'everything.trigger-long-running-operation',
    { duration: 60, steps: 60 },
    { token, requestId, onProgress: (a) => a.status === 'progress' && progressed() },
  );
  await firstProgress;
  const cancelled = await s.agent.cancel({ requestId }, { token });
  t.equal(cancelled.cancelled, true, 'the dispatcher took the cancel');
  t.equal(failure(await running)?.code, 'CANCELLED', 'the execution ends cancelled');
  await waitUntil(
    'the provider to see the cancellation',
    () => logged(/cancelled by its dispatcher/),
    60_000,
  );
});

t.test('a server’s tool error is TOOL_ERROR with the server’s message', async (t) => {
  const { token } = await user('error', ['user', 'files']);
  const error = failure(
    await s.agent.execute('fs.read_text_file', { path: join(files, 'missing.txt') }, { token }),
  );
  t.equal(error?.code, 'TOOL_ERROR');
  t.match(error?.message, /ENOENT|no such file/i, 'the server’s own message');
});

t.test('elicitation from a server is declined: nobody is there to answer', async (t) => {
  const { token } = await user('elicit');
  await waitUntil(
    'the conditional tools',
    async () => (await toolNames()).includes('everything.trigger-elicitation-request'),
    60_000,
  );
  const answer = result(await s.agent.execute('everything.trigger-elicitation-request', {}, { token }));
  t.match(answer, { text: /declined/ }, 'the server got a clean "decline"');
});

t.test('server-filesystem: roles per server and per tool', async (t) => {
  const reader = await user('reader', ['user', 'files']);
  t.match(
    result(
      await s.agent.execute('fs.read_text_file', { path: join(files, 'notes.txt') }, { token: reader.token }),
    ),
    { content: 'hello from a file\n' },
    'a user with the server’s role reads',
  );
  const outsider = await user('outsider');
  t.equal(
    failure(
      await s.agent.execute(
        'fs.read_text_file',
        { path: join(files, 'notes.txt') },
        { token: outsider.token },
      ),
    )?.code,
    'FORBIDDEN',
    'a user without it may not',
  );
  const write = await s.agent.execute(
    'fs.write_file',
    { path: join(files, 'notes.txt'), content: 'overwritten' },
    { token: reader.token },
  );
  t.equal(failure(write)?.code, 'FORBIDDEN', 'writing needs files_write too');
  t.equal(
    await readFile(join(files, 'notes.txt'), 'utf8'),
    'hello from a file\n',
    'and the file is untouched',
  );
  const writer = await user('writer', ['user', 'files', 'files_write']);
  t.match(
    result(
      await s.agent.execute(
        'fs.write_file',
        { path: join(files, 'new.txt'), content: 'written through Toolbus' },
        { token: writer.token },
      ),
    ),
    { content: /Successfully wrote/ },
    'a user with both roles writes (the server declares an output schema: its structured content)',
  );
  t.equal(await readFile(join(files, 'new.txt'), 'utf8'), 'written through Toolbus');
});

/** Calls the long-running tool of `ns`, kills its server at the first progress, returns the answer. */
async function killMidCall(ns: string, token: string): Promise<AgentAnswer> {
  let progressed!: () => void;
  const firstProgress = new Promise<void>((r) => (progressed = r));
  const running = s.agent.execute(
    `${ns}.trigger-long-running-operation`,
    { duration: 4, steps: 8 },
    { token, onProgress: (a) => a.status === 'progress' && progressed(), timeoutMs: 120_000 },
  );
  await firstProgress;
  const pid = Number((await readFile(join(work, `${ns}.pid`), 'utf8')).trim());
  process.kill(pid, 'SIGKILL');
  return running;
}

t.test('a server killed mid-call: INTERRUPTED, tools withdrawn, then back', async (t) => {
  const { token } = await user('killed');
  const error = failure(await killMidCall('victim', token));
  t.equal(error?.code, 'INTERRUPTED');
  t.match(error?.message, /MCP server "victim" stopped/);
  await waitUntil(
    'the provider to withdraw its tools',
    () => logged(/"victim" stopped: its tools are withdrawn/),
    60_000,
  );
  await waitUntil(
    'victim to be back',
    async () =>
      (await s.agent.execute('victim.echo', { message: 'again' }, { token })).status === 'completed',
    120_000,
    500,
  );
  // The dispatcher's side: it forgot victim.echo when the provider withdrew it (so registers it anew).
  const registrations = () =>
    s
      .logText('dispatcher')
      .split('\n')
      .filter((l) => l.includes('remote tool registered') && l.includes('"victim.echo@1.0.0"')).length;
  await waitUntil('the dispatcher’s log of the second registration', () => registrations() >= 2, 60_000);
  t.equal(registrations(), 2, 'the dispatcher dropped victim’s tools while it was down, and took them back');
});

t.test('a server killed mid-call of an idempotent tool: run again once it is back', async (t) => {
  const { token } = await user('rerun');
  t.match(result(await killMidCall('rerun', token)), { text: /Long running operation completed/ });
  t.ok(logged(/"rerun" stopped during a call: running it again/), 'the provider said so');
});

t.test('broken servers: a clear error naming each; every other server keeps working', async (t) => {
  await waitUntil(
    'the three broken servers reported',
    () =>
      logged(/MCP server "broken" did not start.*no config for me/) &&
      logged(/MCP server "garbage" did not start.*not MCP/) &&
      logged(/MCP server "hang" did not start: it did not complete the MCP handshake within 1000 ms/),
    60_000,
  );
  const names = await toolNames();
  t.notOk(
    names.some((n) => /^(broken|garbage|hang)\./.test(n)),
    'none of their tools is announced',
  );
  const { token } = await user('others');
  t.equal(
    (await s.agent.execute('everything.echo', { message: 'still here' }, { token })).status,
    'completed',
  );
  t.equal(failure(await s.agent.execute('hang.anything', {}, { token }))?.code, 'UNKNOWN_TOOL');
});

t.test('Streamable HTTP: a server reached by its url', async (t) => {
  const { token } = await user('http');
  t.match(result(await s.agent.execute('remote.get-sum', { a: 1, b: 2 }, { token })), { text: /is 3/ });
});

t.test('a Toolbus cancel reaches the MCP server as notifications/cancelled', async (t) => {
  const { token } = await user('cancel-mcp');
  const started = join(work, 'wait.started');
  const cancelled = join(work, 'wait.cancelled');
  const requestId = `cancel-mcp-${Date.now()}`;
  const running = s.agent.execute('quirky.wait-for-cancel', { started, cancelled }, { token, requestId });
  await waitUntil('the server to run the call', () => existsSync(started), 60_000);
  t.equal((await s.agent.cancel({ requestId }, { token })).cancelled, true);
  t.equal(failure(await running)?.code, 'CANCELLED');
  await waitUntil('the server to see the cancellation', () => existsSync(cancelled), 60_000);
  t.pass('the server’s own request signal fired');
});

t.test('a tool with an unusable schema is refused naming server and tool; the rest serve', async (t) => {
  t.ok(logged(/MCP server "quirky" tool "bad-schema" is not served: its input schema cannot be used/));
  t.notOk((await toolNames()).includes('quirky.bad-schema'));
  const { token } = await user('quirky');
  t.match(result(await s.agent.execute('quirky.shout', { word: 'hey' }, { token })), { text: 'HEY' });
});

t.test('a result that breaks its output schema is OUTPUT_INVALID', async (t) => {
  const { token } = await user('output');
  t.equal(failure(await s.agent.execute('quirky.wrong-output', {}, { token }))?.code, 'OUTPUT_INVALID');
});

t.test('tools/list_changed: the new list is announced', async (t) => {
  const { token } = await user('grow');
  t.match(result(await s.agent.execute('quirky.grow', {}, { token })), { text: 'grown' });
  await waitUntil(
    'quirky.added at the dispatcher',
    async () => (await toolNames()).includes('quirky.added'),
    60_000,
  );
  t.match(result(await s.agent.execute('quirky.added', { word: 'new' }, { token })), { text: 'NEW' });
});

t.test('a flood of notifications: the server is stopped as faulty and restarted', async (t) => {
  const { token } = await user('flood');
  const error = failure(await s.agent.execute('quirky.flood', {}, { token }));
  t.equal(error?.code, 'INTERRUPTED', `the call in flight is interrupted (${error?.message})`);
  t.ok(logged(/MCP server "quirky" sent more than 100 notifications in a second: stopping it as faulty/));
  t.equal(
    (await s.agent.execute('everything.echo', { message: 'unbothered' }, { token })).status,
    'completed',
    'another server was not disturbed',
  );
  await waitUntil(
    'quirky to be back',
    async () => (await s.agent.execute('quirky.shout', { word: 'back' }, { token })).status === 'completed',
    120_000,
    500,
  );
});

t.test('on demand: stopped when idle, its tools still listed, started by the next call', async (t) => {
  const { token } = await user('lazy');
  const idle = /MCP server "lazy" idle: stopped until the next call/;
  const idles = loggedCount(idle);
  t.match(result(await s.agent.execute('lazy.shout', { word: 'one' }, { token })), { text: 'ONE' });
  await waitUntil('lazy to go idle after the call', () => loggedCount(idle) > idles, 60_000);
  t.ok((await toolNames()).includes('lazy.shout'), 'an idle server’s tools stay announced');
  const ups = loggedCount(/MCP server "lazy" is up/);
  t.match(result(await s.agent.execute('lazy.shout', { word: 'two' }, { token })), { text: 'TWO' });
  await waitUntil(
    'the provider to log that the call started lazy again',
    () => loggedCount(/MCP server "lazy" is up/) === ups + 1,
  );
});

t.test('every user’s stream passes the auditor’s verification', async (t) => {
  for (const userId of users) {
    const report = await verifyHistory(s.store, userId);
    t.ok(report.ok, `${userId}: ${report.break?.problem ?? 'verified'}`);
    t.ok(report.executions.started > 0 && report.executions.open === 0, `${userId}: every execution ended`);
  }
});
