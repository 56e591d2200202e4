/**
 * The generated nats-server configuration: a single server is written as before, and a cluster
 * node gets its own name, the cluster's routes and a route password nobody else knows, in a file
 * nats-server accepts (`nats-server -t`).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { createClusterPassword, createIdentity, natsServerConfig } from './nats-auth.ts';

const identities = [createIdentity('dispatcher', { kind: 'dispatcher' })];
const dir = mkdtempSync(join(tmpdir(), 'toolbus-nats-conf-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** Whether nats-server accepts the configuration text (it exits non-zero on an error). */
const accepted = (text: string, name: string): boolean => {
  const file = join(dir, `${name}.conf`);
  writeFileSync(file, text);
  try {
    execFileSync(process.env['NATS_SERVER_BIN'] ?? 'nats-server', ['-t', '-c', file], { stdio: 'pipe' });
    return true;
  } catch {
    return false;
  }
};

t.test('a single server has no cluster settings', async (t) => {
  const text = natsServerConfig({ port: 4222, storeDir: join(dir, 'js'), identities });
  t.notMatch(text, /cluster|server_name|routes/);
  t.ok(accepted(text, 'single'), 'nats-server accepts it');
});

t.test('a cluster node: its own name, the routes, a generated route password', async (t) => {
  const password = createClusterPassword();
  t.not(password, createClusterPassword(), 'each cluster gets a password of its own');
  t.ok(password.length >= 40, 'the password is long (32 random bytes)');
  const text = natsServerConfig({
    port: 4222,
    storeDir: join(dir, 'js'),
    identities,
    cluster: {
      serverName: 'n1',
      name: 'toolbus',
      port: 6222,
      routes: ['127.0.0.1:6223', '127.0.0.1:6224'],
      password,
      advertiseToClients: false,
    },
  });
  t.match(text, /server_name: "n1"/);
  t.match(text, /name: "toolbus"/);
  t.match(text, `authorization { user: "route", password: "${password}" }`);
  t.match(text, `nats-route://route:${password}@127.0.0.1:6223`);
  t.match(text, `nats-route://route:${password}@127.0.0.1:6224`);
  t.match(text, /no_advertise: true/);
  t.ok(accepted(text, 'node'), 'nats-server accepts it');
});

t.test('the dispatcher is not given allow_responses (its replies are all allowed by subject)', async (t) => {
  // nats-server 2.9 remembers each reply subject delivered to an identity with allow_responses
  // for two minutes and, past 4,096, scans them at every delivery: under load the dispatcher's
  // pulled requests and lookups made nats-server spend its core there (docs/reliability.md).
  const text = natsServerConfig({ port: 4222, storeDir: join(dir, 'js'), identities });
  t.notMatch(text, /allow_responses/);
  const worker = createIdentity('worker', { kind: 'worker', tools: ['echo'] });
  t.match(
    natsServerConfig({ port: 4222, storeDir: join(dir, 'js'), identities: [worker] }),
    /allow_responses/,
    'a worker answers the run requests it gets by their reply subjects',
  );
});
