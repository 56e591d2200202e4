import { hostname } from 'node:os';
import { z } from 'zod';
import { CommonEnv, ConfigError, loadConfig, SecretKey } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { connectNats, natsCredentialsFromConfig } from '../../lib/nats.ts';
import { loadMcpServers } from './config.ts';
import { startMcpToolProvider } from './provider.ts';

/**
 * The MCP tool provider process (`npm run mcp-tools`): serves the tools of the MCP servers named
 * in the `mcpServers` key of the Toolbus configuration file as Toolbus tools.
 *   TOOLBUS_CONFIG (default the checkout's toolbus.json), NATS_URL and its NATS identity (lib/nats.ts; the server
 *   must grant it the servers' namespaces: scripts/nats-auth.ts), WORKER_SECRET (shared with the
 *   dispatchers), WORKER_ID (default mcp-tools-<hostname>-<pid>).
 * Stops on SIGTERM/SIGINT: withdraws every tool, then stops the MCP servers.
 */
const ProviderEnv = CommonEnv.extend({
  WORKER_SECRET: SecretKey,
  WORKER_ID: z
    .string()
    .regex(/^[A-Za-z0-9_.-]{1,64}$/, 'must match [A-Za-z0-9_.-]{1,64}')
    .default(`mcp-tools-${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 64)),
  TOOLBUS_ANNOUNCE_INTERVAL_MS: z.coerce.number().int().min(0).max(3_600_000).default(30_000),
});

const log = createLogger('mcp-tools');

async function main(): Promise<void> {
  let config: z.infer<typeof ProviderEnv>;
  let servers;
  try {
    config = loadConfig(ProviderEnv);
    servers = await loadMcpServers();
  } catch (e) {
    log.fatal(
      { problems: e instanceof ConfigError ? e.problems : [(e as Error).message] },
      'invalid configuration',
    );
    process.exit(1);
  }
  if (Object.keys(servers.servers).length === 0) {
    log.fatal(
      { file: servers.file ?? null },
      servers.file
        ? 'no MCP servers: the configuration file has no mcpServers'
        : 'no configuration file: set TOOLBUS_CONFIG, or write toolbus.json at the checkout root (docs/tools.md)',
    );
    process.exit(1);
  }
  const nc = await connectNats(config.NATS_URL, 'mcp-tools', natsCredentialsFromConfig(config));
  const provider = await startMcpToolProvider({
    nc,
    servers: servers.servers,
    secret: config.WORKER_SECRET,
    workerId: config.WORKER_ID,
    announceIntervalMs: config.TOOLBUS_ANNOUNCE_INTERVAL_MS,
    log,
  });
  log.info({ file: servers.file, servers: provider.states() }, 'MCP tool provider ready');

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'MCP tool provider stopping');
    provider
      .close()
      .then(() => nc.drain())
      .then(
        () => process.exit(0),
        (e: unknown) => {
          log.error({ err: { message: (e as Error).message } }, 'MCP tool provider did not stop cleanly');
          process.exit(1);
        },
      );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  void nc.closed().then((err) => {
    if (stopping) return;
    log.fatal({ err: err ? { message: err.message } : undefined }, 'NATS connection closed');
    process.exit(1);
  });
}

main().catch((e: unknown) => {
  log.fatal({ err: { message: (e as Error).message } }, 'MCP tool provider failed to start');
  process.exit(1);
});
