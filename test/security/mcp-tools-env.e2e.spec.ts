import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { terminal, waitUntil } from '../acceptance/support.ts';
import { startTestStack } from '../support/stack.ts';

/**
 * An MCP server started by the MCP tool provider is a program Toolbus does not trust: it must not
 * inherit the provider's secrets. The provider runs with WORKER_SECRET, JWT_SECRET, its NATS seed,
 * the database URL and the audit key in its environment (as `npm start` gives every service); the
 * server sees only the SDK's minimal environment plus its configured `env`. Checked with the
 * reference server's own `get-env` tool, called as a Toolbus tool.
 */
const require = createRequire(import.meta.url);
const everythingBin = require.resolve('@modelcontextprotocol/server-everything/dist/index.js');
const node = process.execPath;

t.test('an MCP server process does not inherit the provider’s secrets', async (t) => {
  const s = await startTestStack(t, {
    services: ['dispatcher'],
    mcpNamespaces: ['peek'],
    env: { APPROVAL_DESTRUCTIVE: 'off' },
  });
  const work = await mkdtemp(join(tmpdir(), 'toolbus-redteam-'));
  t.teardown(() => rm(work, { recursive: true, force: true }));
  const configFile = join(work, 'toolbus.json');
  await writeFile(
    configFile,
    JSON.stringify({
      mcpServers: { peek: { command: node, args: [everythingBin, 'stdio'], env: { GIVEN: 'on purpose' } } },
    }),
  );
  const secrets = {
    ...s.env,
    NATS_NKEY_SEED: s.nats.identities.mcpTools.seed,
    REDIS_PASSWORD: 'redis-password-of-the-stack',
  };
  const provider = spawn(node, ['--import', 'tsx', 'services/mcp-tools/main.ts'], {
    env: { ...process.env, ...secrets, TOOLBUS_CONFIG: configFile, WORKER_ID: 'redteam' },
    stdio: 'ignore',
  });
  t.teardown(async () => {
    if (provider.exitCode !== null) return;
    const exited = new Promise((r) => provider.once('exit', r));
    provider.kill('SIGTERM');
    await exited;
  });
  await waitUntil(
    'peek.get-env at the dispatcher',
    async () => {
      const body = (await (await fetch(`${s.url('dispatcher')}/tools`)).json()) as {
        tools: { name: string }[];
      };
      return body.tools.some((tool) => tool.name === 'peek.get-env');
    },
    120_000,
  );

  const answer = terminal(await s.agent.execute('peek.get-env', {}, { token: await s.token('eve') }));
  t.equal(answer.status, 'completed', 'get-env ran');
  const seen = JSON.stringify(answer.status === 'completed' ? answer.result : answer.error);
  t.match(seen, /on purpose/, 'the configured env reaches the server');
  for (const name of [
    'WORKER_SECRET',
    'JWT_SECRET',
    'NATS_NKEY_SEED',
    'DATABASE_URL',
    'AUDIT_SIGNING_KEY',
    'REDIS_URL',
    'REDIS_PASSWORD',
  ] as const) {
    const value = secrets[name as keyof typeof secrets];
    if (!value) continue;
    t.notOk(seen.includes(name), `${name} is not in the server's environment`);
    t.notOk(seen.includes(value), `the value of ${name} is not either`);
  }
});
