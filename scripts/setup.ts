/**
 * `tsx scripts/setup.ts --dir DIR --nats-port N [--nats-host H] [--nats-store DIR] [--nats-monitor-port N] [--owner UID:GID]`:
 * makes (once) the secrets, NATS identities and nats-server configuration of a Toolbus stack in
 * DIR, as `npm start` does in .toolbus/. docker-compose runs it in its `setup` service.
 * `--nats-cluster-hosts=a,b,c [--nats-cluster-port=6222]` also writes `nats/cluster-<n>.conf`, one
 * per node of a JetStream cluster whose nodes are those hosts (docker-compose.cluster.yml).
 */
import { parseArgs } from 'node:util';
import { chownSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { LOCAL_DIR, localSetup } from './local.ts';

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    'nats-port': { type: 'string', default: '4222' },
    'nats-host': { type: 'string' },
    'nats-store': { type: 'string' },
    'nats-monitor-port': { type: 'string' },
    'nats-cluster-hosts': { type: 'string' },
    'nats-cluster-port': { type: 'string', default: '6222' },
    /** uid:gid that should own what is made (the services' user in docker-compose). */
    owner: { type: 'string' },
    /** Also write postgres-password, for a database container's POSTGRES_PASSWORD_FILE. */
    'postgres-password-file': { type: 'boolean', default: false },
  },
});
const port = (v: string | undefined) => (v === undefined ? undefined : Number.parseInt(v, 10));
const setup = await localSetup({
  ...(values.dir ? { dir: values.dir } : {}),
  natsPort: port(values['nats-port'])!,
  ...(values['nats-host'] ? { natsHost: values['nats-host'] } : {}),
  ...(values['nats-store'] ? { natsStoreDir: values['nats-store'] } : {}),
  ...(values['nats-monitor-port'] ? { natsMonitorPort: port(values['nats-monitor-port'])! } : {}),
  postgresPasswordFile: values['postgres-password-file'],
  ...(values['nats-cluster-hosts']
    ? {
        cluster: {
          hosts: values['nats-cluster-hosts'].split(','),
          nodes: values['nats-cluster-hosts'].split(',').length,
          clusterPort: port(values['nats-cluster-port'])!,
        },
      }
    : {}),
});
if (values.owner) {
  const [uid, gid] = values.owner.split(':').map((n) => Number.parseInt(n, 10));
  const dir = values.dir ?? LOCAL_DIR;
  for (const path of [
    dir,
    ...readdirSync(dir, { recursive: true, encoding: 'utf8' }).map((p) => join(dir, p)),
  ]) {
    chownSync(path, uid!, gid ?? uid!);
  }
}
console.log(
  setup.created
    ? `made secrets and NATS identities in ${values.dir ?? '.toolbus/'}`
    : 'kept the existing secrets and identities',
);
