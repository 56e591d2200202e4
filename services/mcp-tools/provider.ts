import type { McpServers } from '../../contracts/index.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { McpServerLink, type ServerState } from './server.ts';

export interface McpToolProviderOptions {
  nc: NatsConnection;
  servers: McpServers;
  /** The worker secret shared with the dispatchers. */
  secret: string;
  workerId: string;
  announceIntervalMs?: number;
  /** Restart backoff for servers kept running (default 500 ms doubling to 30 s). */
  restart?: { minMs: number; maxMs: number };
  log: Logger;
}

export interface McpToolProvider {
  /** Each server's state, by namespace. */
  states(): Record<string, ServerState>;
  /** Withdraws every tool and stops every server. */
  close(): Promise<void>;
}

/**
 * Serves the tools of every configured MCP server, each under its own namespace. Resolves once
 * every server has had its first attempt to start: a server that failed is retried in the
 * background, and never holds up or harms the others.
 */
export async function startMcpToolProvider(o: McpToolProviderOptions): Promise<McpToolProvider> {
  const links = Object.entries(o.servers).map(
    ([name, config]) =>
      new McpServerLink({
        name,
        config,
        nc: o.nc,
        secret: o.secret,
        workerId: o.workerId,
        log: o.log,
        ...(o.announceIntervalMs !== undefined ? { announceIntervalMs: o.announceIntervalMs } : {}),
        ...(o.restart ? { restart: o.restart } : {}),
      }),
  );
  await Promise.all(links.map((l) => l.start()));
  return {
    states: () => Object.fromEntries(links.map((l) => [l.name, l.state])),
    async close() {
      await Promise.all(links.map((l) => l.close()));
    },
  };
}
