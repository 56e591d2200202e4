import type { Logger } from '../../../lib/log.ts';
import { connectNats, type NatsConnection, type NatsCredentials } from '../../../lib/nats.ts';
import { serveTools, type ToolDefinition } from '../../../lib/tools/index.ts';
import { exampleTools } from './index.ts';
import { testTools } from './testing.ts';

export interface ToolWorkerConfig {
  natsUrl: string;
  /** Its NATS identity (see lib/nats.ts). */
  credentials?: NatsCredentials;
  /** WORKER_SECRET: signs announcements, verifies invocations. */
  secret: string;
  workerId: string;
  /** Names of the tools to serve; all example tools when empty or omitted. */
  tools?: string[];
  /** Also allow the test tools (TOOLBUS_TEST_TOOLS=1). */
  testTools?: boolean;
  /** The tools of the configuration file (lib/toolbusConfig.ts), served besides the example tools. */
  configuredTools?: readonly ToolDefinition[];
  announceIntervalMs?: number;
  log?: Logger;
}

export interface ToolWorker {
  workerId: string;
  tools: string[];
  nc: NatsConnection;
  /** Stops taking calls, waits for the running ones, closes the NATS connection. */
  close(): Promise<void>;
}

/**
 * The definitions named in `names` (all example and configured tools when none are named).
 * Unknown names are an error.
 */
export function selectTools(
  names: readonly string[] | undefined,
  includeTestTools = false,
  configured: readonly ToolDefinition[] = [],
): ToolDefinition[] {
  const served = [...exampleTools, ...configured];
  const available = new Map([...served, ...(includeTestTools ? testTools : [])].map((t) => [t.name, t]));
  if (!names || names.length === 0) return served;
  const unknown = names.filter((n) => !available.has(n));
  if (unknown.length > 0) {
    throw new Error(
      `unknown tool(s) ${unknown.join(', ')}; available: ${[...available.keys()].join(', ')}` +
        (includeTestTools ? '' : ' (test tools need TOOLBUS_TEST_TOOLS=1)'),
    );
  }
  return [...new Set(names)].map((n) => available.get(n)!);
}

/** A tool worker: connects to NATS and serves the chosen tools in the `toolbus-workers` queue group. */
export async function startToolWorker(config: ToolWorkerConfig): Promise<ToolWorker> {
  const tools = selectTools(config.tools, config.testTools ?? false, config.configuredTools);
  const nc = await connectNats(config.natsUrl, `toolbus-worker-${config.workerId}`, config.credentials);
  try {
    const server = await serveTools(nc, tools, {
      workerId: config.workerId,
      secret: config.secret,
      ...(config.announceIntervalMs !== undefined ? { announceIntervalMs: config.announceIntervalMs } : {}),
      ...(config.log ? { log: config.log } : {}),
    });
    let closing: Promise<void> | undefined;
    return {
      workerId: config.workerId,
      tools: tools.map((t) => `${t.name}@${t.version}`),
      nc,
      close() {
        closing ??= (async () => {
          await server.stop();
          if (!nc.isClosed()) await nc.drain().catch(() => nc.close());
        })();
        return closing;
      },
    };
  } catch (e) {
    await nc.close();
    throw e;
  }
}
