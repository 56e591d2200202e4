import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { localSetup } from './local.ts';

/** The route password as the node's configuration gives it to the routes. */
const routePassword = (config: string): string | undefined =>
  /authorization \{ user: "route", password: "([^"]*)" \}/.exec(config)?.[1];

t.test("a cluster's route password is a generated secret, kept, and only the owner's", async (t) => {
  const dir = t.testdir();
  const setup = await localSetup({ dir, natsPort: 4299, cluster: { nodes: 3, clusterPort: 6299 } });
  const configs = await Promise.all(setup.natsCluster.map((n) => readFile(n.config, 'utf8')));
  const password = routePassword(configs[0]!);
  t.ok(password && password.length >= 32, 'a long password');
  t.ok(
    configs.every((c) => routePassword(c) === password),
    'every node admits the same password',
  );
  for (const file of [join(dir, 'nats', 'route-password'), ...setup.natsCluster.map((n) => n.config)]) {
    t.equal((await stat(file)).mode & 0o777, 0o600, `${file} is the owner's only`);
  }
  t.notOk(Object.values(setup.secrets).includes(password!), "not among the services' secrets");
  const again = await localSetup({ dir, natsPort: 4299, cluster: { nodes: 3, clusterPort: 6299 } });
  t.equal(routePassword(await readFile(again.natsCluster[0]!.config, 'utf8')), password, 'kept');
});

t.test('an empty or short route-password file (a start stopped while writing it) is not used', async (t) => {
  const dir = t.testdir();
  await mkdir(join(dir, 'nats'), { recursive: true, mode: 0o700 });
  await writeFile(join(dir, 'nats', 'route-password'), '\n', { mode: 0o600 });
  const setup = await localSetup({ dir, natsPort: 4299, cluster: { nodes: 3, clusterPort: 6299 } });
  const password = routePassword(await readFile(setup.natsCluster[0]!.config, 'utf8'));
  t.ok(password && password.length >= 32, 'a new password, not an empty one any route could give');
});

t.test(
  "a cluster's hosts must be host names: an empty one or one that rewrites the route URL is refused",
  async (t) => {
    for (const hosts of [
      ['nats', 'nats-2', ''],
      ['nats', 'evil.example@nats-2', 'nats-3'],
      ['nats', 'nats-2 ', 'nats-3'],
    ]) {
      await t.rejects(
        localSetup({ dir: t.testdir(), natsPort: 4299, cluster: { nodes: 3, clusterPort: 6222, hosts } }),
        { message: /host/ },
        JSON.stringify(hosts),
      );
    }
    const ok = await localSetup({
      dir: t.testdir(),
      natsPort: 4299,
      cluster: { nodes: 3, clusterPort: 6222, hosts: ['nats', 'nats-2', '10.0.0.3'] },
    });
    t.equal(ok.natsCluster.length, 3, 'names and addresses are fine');
  },
);

t.test(
  "the worker identity may serve the configuration's workerTools, which the dispatcher does not load",
  async (t) => {
    // Inside the checkout (.scratch/ is git-ignored): the module resolves `zod` as a user's would.
    const scratch = fileURLToPath(new URL('../.scratch/', import.meta.url));
    await mkdir(scratch, { recursive: true });
    const dir = await mkdtemp(join(scratch, 'local-setup-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const define = fileURLToPath(new URL('../lib/tools/index.ts', import.meta.url));
    await writeFile(
      join(dir, 'mine.ts'),
      `import { z } from 'zod';
import { defineTool } from ${JSON.stringify(define)};
export default defineTool({
  name: 'only_on_my_worker', version: '1.0.0', description: 'test', input: z.object({}), output: z.object({}),
  async run() { return {}; },
});`,
    );
    await writeFile(join(dir, 'toolbus.json'), JSON.stringify({ workerTools: ['mine.ts'] }));
    const before = process.env['TOOLBUS_CONFIG'];
    process.env['TOOLBUS_CONFIG'] = join(dir, 'toolbus.json');
    t.teardown(() => {
      if (before === undefined) delete process.env['TOOLBUS_CONFIG'];
      else process.env['TOOLBUS_CONFIG'] = before;
    });
    const setup = await localSetup({ dir: t.testdir(), natsPort: 4299 });
    t.match(
      JSON.stringify(setup.identities['worker']),
      /only_on_my_worker/,
      'the worker identity is authorized for it',
    );
    t.match(
      await readFile(setup.natsConfig, 'utf8'),
      /toolbus\.tools\.run\.only_on_my_worker/,
      'in nats.conf',
    );
  },
);
