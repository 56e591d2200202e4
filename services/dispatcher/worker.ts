import { hostname } from 'node:os';
import { z } from 'zod';
import {
  CommonEnv,
  ConfigError,
  loadConfig,
  refuseTestHooksInProduction,
  SecretKey,
} from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { natsCredentialsFromConfig, natsUrlForLog } from '../../lib/nats.ts';
import { toolsFromConfiguration } from '../../lib/toolbusConfig.ts';
import { startToolWorker } from './tools/worker.ts';

/**
 * A tool worker process: serves example tools over NATS for the dispatchers.
 *   NATS_URL, its NATS identity (NATS_NKEY_SEED / NATS_NKEY_SEED_FILE / NATS_CREDS / NATS_USER and
 *   NATS_PASSWORD / NATS_TOKEN, NATS_TLS_*, NATS_IDENTITY: lib/nats.ts; the server must let it serve
 *   the tools it names), WORKER_SECRET (shared with the dispatchers), WORKER_ID (default <hostname>-<pid>),
 *   TOOLBUS_WORKER_TOOLS (comma list of tool names; default all example tools and those of the
 *   configuration file: TOOLBUS_CONFIG, default toolbus.json at the checkout root, lib/toolbusConfig.ts),
 *   TOOLBUS_TEST_TOOLS=1 (the test tools may be named too; refused when NODE_ENV=production).
 * Stops on SIGTERM/SIGINT: withdraws its tools at once, then waits for the running calls.
 * Exits 1 with the dispatcher's reason when a dispatcher refuses to register one of its tools (a
 * tool the dispatcher runs itself, a manifest it finds invalid): serving it would be a pretence.
 */
const defaultWorkerId = `${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_.:-]/g, '-').slice(0, 128);

const WorkerVariables = CommonEnv.extend({
  /** Shared with the dispatchers; no default. */
  WORKER_SECRET: SecretKey,
  WORKER_ID: z
    .string()
    .regex(/^[A-Za-z0-9_.:-]{1,128}$/, 'must match [A-Za-z0-9_.:-]{1,128}')
    .default(defaultWorkerId),
  TOOLBUS_WORKER_TOOLS: z
    .string()
    .default('')
    .transform((s) =>
      s
        .split(',')
        .map((n) => n.trim())
        .filter(Boolean),
    ),
  TOOLBUS_TEST_TOOLS: z.enum(['0', '1', 'false', 'true']).default('0'),
  /** How often to announce again (ms); 0 = only at start and when a dispatcher asks. */
  TOOLBUS_ANNOUNCE_INTERVAL_MS: z.coerce.number().int().min(0).max(3_600_000).default(30_000),
});
const WorkerEnv = refuseTestHooksInProduction(WorkerVariables, {
  TOOLBUS_TEST_TOOLS: (v) => v === '1' || v === 'true',
});

const log = createLogger('tool-worker');

async function main(): Promise<void> {
  let config: z.infer<typeof WorkerEnv>;
  let configuredTools;
  try {
    config = loadConfig(WorkerEnv);
    configuredTools = await toolsFromConfiguration(process.env, 'worker');
  } catch (e) {
    log.fatal(
      { problems: e instanceof ConfigError ? e.problems : [(e as Error).message] },
      'invalid configuration',
    );
    process.exit(1);
  }
  let stop: (signal: string, code?: number) => void = () => process.exit(1);
  const worker = await startToolWorker({
    natsUrl: config.NATS_URL,
    credentials: natsCredentialsFromConfig(config),
    secret: config.WORKER_SECRET,
    workerId: config.WORKER_ID,
    tools: config.TOOLBUS_WORKER_TOOLS,
    testTools: config.TOOLBUS_TEST_TOOLS === '1' || config.TOOLBUS_TEST_TOOLS === 'true',
    configuredTools,
    announceIntervalMs: config.TOOLBUS_ANNOUNCE_INTERVAL_MS,
    onRefused: (refusal) => {
      log.fatal(
        { tool: refusal.tool, reason: refusal.reason },
        'a dispatcher refused this tool: fix the configuration (TOOLBUS_WORKER_TOOLS, the tool, or the dispatcher) and start again',
      );
      stop('refused', 1);
    },
    log,
  });
  log.info(
    { workerId: worker.workerId, tools: worker.tools, nats: natsUrlForLog(config.NATS_URL) },
    'tool worker ready',
  );

  let stopping = false;
  stop = (signal: string, code = 0) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'tool worker stopping');
    worker.close().then(
      () => process.exit(code),
      (e: unknown) => {
        log.error({ err: { message: (e as Error).message } }, 'tool worker did not stop cleanly');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  void worker.nc.closed().then((err) => {
    if (stopping) return;
    log.fatal({ err: err ? { message: err.message } : undefined }, 'NATS connection closed');
    process.exit(1);
  });
}

main().catch((e: unknown) => {
  log.fatal({ err: { message: (e as Error).message } }, 'tool worker failed to start');
  process.exit(1);
});
