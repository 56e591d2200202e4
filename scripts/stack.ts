/**
 * `npm start`: runs the Toolbus stack against the local NATS, PostgreSQL and Redis (the event
 * store on PostgreSQL unless KURRENTDB_URL is set), one process per service, with readable logs.
 * Ctrl-C stops every service cleanly.
 */
import { existsSync } from 'node:fs';
import { CommonEnv, ConfigError, loadConfig, SecretKey } from '../lib/config.ts';
import { signToken } from '../lib/auth.ts';
import { launchStack, prettyLine, type ServiceName } from './launcher.ts';

const ALL: ServiceName[] = ['dispatcher', 'projector', 'notifier', 'auditor'];

async function main() {
  let config;
  try {
    config = loadConfig(
      CommonEnv.extend({
        JWT_SECRET: SecretKey,
        AUDITOR_PORT: CommonEnv.shape.DISPATCHER_PORT.default(8083),
      }),
    );
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(e.message);
      process.exit(2);
    }
    throw e;
  }
  const services = ALL.filter((name) => existsSync(new URL(`../services/${name}/main.ts`, import.meta.url)));
  console.log(
    `starting ${services.join(', ')} (event store: ${config.KURRENTDB_URL ? 'KurrentDB' : 'PostgreSQL'})`,
  );
  const stack = await launchStack({
    services,
    env: {},
    ports: {
      dispatcher: config.DISPATCHER_PORT,
      projector: config.PROJECTOR_PORT,
      notifier: config.NOTIFIER_PORT,
      auditor: config.AUDITOR_PORT,
    },
    onLog: (line) => console.log(prettyLine(line)),
  });

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    console.log(`\n${signal}: stopping ${services.join(', ')}...`);
    await stack.stop();
    console.log('stopped.');
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));

  const demoToken = await signToken(config.JWT_SECRET, { sub: 'demo', roles: ['user'] }, '12h');
  const lines = [
    '',
    'Toolbus is running:',
    ...services.map(
      (name) =>
        `  ${name.padEnd(10)} ${stack.services[name].url}  (health: /health/ready, metrics: /metrics)`,
    ),
  ];
  if (services.includes('notifier')) {
    lines.push('', `Live page for user "demo": ${stack.services.notifier.url}/#token=${demoToken}`);
  }
  if (services.includes('dispatcher')) {
    lines.push(
      '',
      'Run a tool as "demo":',
      `  curl -s -X POST ${stack.services.dispatcher.url}/executions -H 'content-type: application/json' \\`,
      `    -H 'authorization: Bearer ${demoToken}' \\`,
      `    -d '{"tool":"dataset_stats","args":{"columns":{"latency":[12,15,11,40,13]}}}'`,
    );
  }
  lines.push('', 'Ctrl-C stops everything.', '');
  console.log(lines.join('\n'));
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
