/**
 * The packages as a user gets them: `npm pack` makes the tarballs of @toolbus/tools and
 * @toolbus/client (their `prepack` builds them with tsc), a new project outside this repository
 * installs them with `npm install <tarball>` (their dependencies come from the npm registry), a
 * TypeScript file of that project type-checks against the shipped declarations, and a plain
 * JavaScript program serves a tool of its own and runs it as an agent through a running stack.
 *
 * Slow: packing builds both packages and the install downloads their dependencies (about a
 * minute here, most of it the install), hence an e2e test with its own time limit.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';
import { STACK_WORKER_SECRET, startTestStack } from '../test/support/stack.ts';

t.setTimeout(900_000);
const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../', import.meta.url));
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');

const project = await mkdtemp(join(tmpdir(), 'toolbus-user-project-'));
t.teardown(() => rm(project, { recursive: true, force: true }));

/** A user's own tool, served by the user's own process, run by the user's own agent. */
const PROGRAM = `
import { z } from 'zod';
import { connectNats, defineTool, serveTools } from '@toolbus/tools';
import { connectNats as connectAgent, createAgentClient } from '@toolbus/client';

const env = process.env;
const shout = defineTool({
  name: 'shout',
  version: '1.0.0',
  description: 'Upper-cases a text.',
  input: z.object({ text: z.string() }),
  output: z.object({ text: z.string() }),
  async run({ text }, ctx) {
    ctx.progress({ fraction: 0.5, message: 'shouting' });
    return { text: text.toUpperCase() };
  },
});
const workerNc = await connectNats(env.NATS_URL, 'packed-worker', { nkeySeed: env.WORKER_SEED });
const server = await serveTools(workerNc, [shout], { workerId: 'packed-worker', secret: env.WORKER_SECRET });
// The dispatcher knows the tool once it has taken the worker's announcement.
for (;;) {
  const { tools } = await (await fetch(env.DISPATCHER_URL + '/tools')).json();
  if (tools.some((m) => m.name === 'shout')) break;
  await new Promise((r) => setTimeout(r, 100));
}
const agentNc = await connectAgent(env.NATS_URL, 'packed-agent', { nkeySeed: env.AGENT_SEED });
const progress = [];
const answer = await createAgentClient(agentNc).execute(
  'shout',
  { text: 'hello from outside' },
  { token: env.TOKEN, onProgress: (a) => progress.push(a.status) },
);
console.log(JSON.stringify({ answer, progress }));
await server.stop();
await workerNc.drain();
await agentNc.drain();
`;

/** The same, as TypeScript: the declarations must carry the types a user relies on. */
const TYPED = `
import { z } from 'zod';
import { defineTool, serveTools, type ToolDefinition } from '@toolbus/tools';
import { createAgentClient, type TerminalAnswer } from '@toolbus/client';

const shout = defineTool({
  name: 'shout',
  version: '1.0.0',
  description: 'Upper-cases a text.',
  input: z.object({ text: z.string() }),
  output: z.object({ text: z.string() }),
  async run({ text }) {
    const upper: string = text.toUpperCase();
    return { text: upper };
  },
});
export const tools: ToolDefinition[] = [shout];
export type Served = Awaited<ReturnType<typeof serveTools>>;
export type Answer = TerminalAnswer;
export const client: typeof createAgentClient = createAgentClient;
// @ts-expect-error: run must return the output schema's shape
defineTool({ ...shout, run: async () => ({ wrong: 1 }) });
`;

t.test('packed tarballs install into a new project and run a tool through a running stack', async (t) => {
  for (const pkg of ['tools', 'client']) {
    await run('npm', ['pack', '--pack-destination', project, '--silent'], {
      cwd: join(ROOT, 'packages', pkg),
    });
  }
  const tarballs = (await readdir(project)).filter((f) => f.endsWith('.tgz')).sort();
  t.strictSame(tarballs, ['toolbus-client-0.1.0.tgz', 'toolbus-tools-0.1.0.tgz']);

  await writeFile(
    join(project, 'package.json'),
    JSON.stringify({ name: 'a-user-project', private: true, type: 'module' }),
  );
  await run('npm', ['install', '--no-audit', '--no-fund', ...tarballs.map((f) => `./${f}`)], {
    cwd: project,
  });

  await writeFile(join(project, 'typed.ts'), TYPED);
  const typecheck = await run(
    process.execPath,
    [TSC, '--noEmit', '--strict', '--module', 'nodenext', '--target', 'es2022', '--skipLibCheck', 'typed.ts'],
    { cwd: project },
  ).then(
    () => ({ code: 0, out: '' }),
    (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
  );
  t.equal(typecheck.code, 0, `a TypeScript user's file type-checks against the packages: ${typecheck.out}`);

  const s = await startTestStack(t, { services: ['dispatcher'], workerTools: ['shout'] });
  await writeFile(join(project, 'program.mjs'), PROGRAM);
  const child = spawn(process.execPath, ['program.mjs'], {
    cwd: project,
    env: {
      PATH: process.env['PATH'] ?? '',
      NATS_URL: s.nats.url,
      WORKER_SEED: s.nats.identities.worker.seed,
      AGENT_SEED: s.nats.identities.agent.seed,
      WORKER_SECRET: STACK_WORKER_SECRET,
      DISPATCHER_URL: s.url('dispatcher'),
      TOKEN: await s.token('packed_user'),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  t.equal(code, 0, `the user's program ends cleanly: ${err}`);
  const { answer, progress } = JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as {
    answer: { status: string; result: unknown };
    progress: string[];
  };
  t.match(answer, { status: 'completed', result: { text: 'HELLO FROM OUTSIDE' } }, 'the tool ran');
  t.ok(progress.includes('executing'), `the agent saw it run: ${progress.join(', ')}`);
});
