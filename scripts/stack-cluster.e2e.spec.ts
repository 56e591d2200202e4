/**
 * `npm run start:cluster` as an operator meets it: three nats-server nodes in one JetStream
 * cluster, the request stream on three replicas, two dispatchers, projectors and notifiers. Both
 * dispatchers run the printed tool line, the stream is replicated on every node, and Ctrl-C stops
 * everything. The stack's own directory (TOOLBUS_DIR) and every port are the test's.
 */
import { randomUUID } from 'node:crypto';
import { spawn } from 'node:child_process';
import { readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { jetstreamManager } from '@nats-io/jetstream';
import t from 'tap';
import { jetstream as names } from '../contracts/index.ts';
import { connectNats } from '../lib/nats.ts';
import { freePortRange } from '../test/support/ports.ts';
import { createTestDatabase } from '../test/support/postgres.ts';
import { startRedis } from '../test/support/processes.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

t.test('npm run start:cluster runs the clustered topology', async (t) => {
  const [redis, db, services, natsPort, routePort] = await Promise.all([
    startRedis(t),
    createTestDatabase(t),
    freePortRange(13),
    freePortRange(3),
    freePortRange(3),
  ]);
  const dir = await mkdtemp(join(tmpdir(), 'toolbus-cluster-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/stack.ts', '--cluster'], {
    cwd: ROOT,
    env: {
      PATH: process.env['PATH'] ?? '',
      TOOLBUS_DIR: dir,
      TOOLBUS_NATS_PORT: String(natsPort),
      TOOLBUS_NATS_CLUSTER_PORT: String(routePort),
      REDIS_URL: redis.url,
      DATABASE_URL: db.url,
      DISPATCHER_PORT: String(services),
      PROJECTOR_PORT: String(services + 1),
      NOTIFIER_PORT: String(services + 2),
      AUDITOR_PORT: String(services + 3),
      GATEWAY_PORT: String(services + 4),
      CONSOLE_PORT: String(services + 5),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  t.teardown(() => {
    // A failure says what the stack logged (its directory goes with the test).
    if (!t.passing()) t.comment(`the stack's last output:\n${output.slice(-8_000)}`);
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  while (!output.includes('Ctrl-C stops everything.')) {
    if (child.exitCode !== null) throw new Error(`start:cluster stopped before it ran:\n${output}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  t.match(output, /JetStream, 3 nodes, requests on 3 replicas/, 'it says the bus is a cluster');
  for (const name of ['dispatcher-2', 'projector-2', 'notifier-2']) {
    t.match(output, new RegExp(`${name}\\s+http://127\\.0\\.0\\.1:\\d+`), `${name} is listed`);
  }

  // The demo token from the printed curl line; each dispatcher runs a tool with it.
  const token = /authorization: Bearer (\S+?)'/.exec(output)?.[1];
  t.ok(token, 'a demo token is printed');
  for (const port of [services, services + 10]) {
    // As a client is told to: an OVERLOADED refusal (the intake did not take the request, as when
    // a loaded machine's JetStream cluster is still electing the stream's leader) is sent again,
    // with the same request id, after the Retry-After it names.
    const requestId = randomUUID();
    let answer: unknown;
    for (let attempt = 1; ; attempt++) {
      const res = await fetch(`http://127.0.0.1:${port}/executions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({
          requestId,
          tool: 'dataset_stats',
          args: { columns: { latency: [12, 15, 11] } },
        }),
      });
      answer = await res.json();
      const retryAfter = Number(res.headers.get('retry-after'));
      if (res.status !== 503 || !(retryAfter > 0) || attempt === 10) break;
      t.comment(`attempt ${attempt} on ${port}: ${JSON.stringify(answer)}`);
      await new Promise((r) => setTimeout(r, retryAfter * 1000));
    }
    t.match(
      answer,
      { status: 'completed', result: { rowCount: 3 } },
      `the dispatcher on ${port} ran it (${JSON.stringify(answer)})`,
    );
  }

  // The intake stream: three replicas, every one current.
  const seed = (await readFile(join(dir, 'nats', 'dispatcher.nk'), 'utf8')).trim();
  const urls = [0, 1, 2].map((i) => `nats://127.0.0.1:${natsPort + i}`).join(',');
  // Over TLS, trusting the stack's own CA (routes between the nodes are TLS too).
  const nc = await connectNats(urls, 'stack-cluster-test', {
    nkeySeed: seed,
    tls: { caFile: join(dir, 'nats', 'tls', 'ca.pem') },
  });
  t.teardown(() => nc.close());
  const info = await (await jetstreamManager(nc)).streams.info(names.requestsStream);
  t.equal(info.config.num_replicas, 3, 'the request stream has three replicas');
  t.equal(info.cluster?.replicas?.length, 2, 'a leader and two followers');

  child.kill('SIGINT');
  t.equal(await exited, 0, 'Ctrl-C stops everything cleanly');
});
