import { readFileSync } from 'node:fs';
import { jetstream } from '@nats-io/jetstream';
import { createMcpHandler, localhostAllowedHostnames } from '@modelcontextprotocol/server';
import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import { tokenVerifierFromConfig } from '../../lib/auth.ts';
import { createHttpApp } from '../../lib/http.ts';
import { createLogger, type Logger } from '../../lib/log.ts';
import { connectNats, natsCredentialsFromConfig, natsReady, type NatsConnection } from '../../lib/nats.ts';
import { ToolCatalog } from './catalog.ts';
import { createMetrics } from './metrics.ts';
import { allowedHostsOf, listOf, publicUrlOf, type GatewayConfig } from './config.ts';
import { bearerIdentify, testModeIdentify } from './principal.ts';
import { MCP_PATH, registerMcpRoutes } from './routes.ts';
import { InFlight, serverFactory } from './server.ts';
import { Waits } from './waits.ts';

const VERSION = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

export interface RunningGateway {
  app: FastifyInstance & { metrics: Registry };
  nc: NatsConnection;
  /** The address of /mcp when listening. */
  url: string | null;
  close(): Promise<void>;
}

/**
 * Starts the MCP gateway: its own NATS connection (its own identity, an agent's rights), the
 * tool catalog read from the dispatchers, and `/mcp` served by the MCP SDK behind Toolbus's
 * token verification. It holds no state of its own: every call is an execution in the store.
 */
export async function startGateway(
  config: GatewayConfig,
  options: { log?: Logger; listen?: boolean } = {},
): Promise<RunningGateway> {
  const log = options.log ?? createLogger('gateway', config.LOG_LEVEL);
  const nc = await connectNats(config.NATS_URL, 'gateway', natsCredentialsFromConfig(config));
  const cleanup: Array<() => Promise<unknown>> = [
    () => (nc.isClosed() ? Promise.resolve() : nc.drain().catch(() => nc.close())),
  ];
  const undo = async () => {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
  };
  try {
    const catalog = new ToolCatalog({
      dispatcherUrl: config.GATEWAY_DISPATCHER_URL,
      ttlMs: config.GATEWAY_TOOLS_TTL_MS,
      onInvalid: (problem) =>
        log.warn({ problem }, 'a tool of the registry is not a valid manifest: not served'),
    });
    const app = createHttpApp({
      service: 'gateway',
      logLevel: config.LOG_LEVEL,
      fastify: {
        logger: undefined,
        loggerInstance: log.child({ component: 'http' }),
        // A call's event stream stays open as long as the call: closing waits for no open one.
        forceCloseConnections: true,
      },
      checks: {
        nats: () => natsReady(nc),
        dispatcher: () => catalog.check(),
      },
    });
    cleanup.push(() => app.close());
    const metrics = createMetrics(app.metrics);

    const bearer = bearerIdentify(tokenVerifierFromConfig(config));
    // GatewayEnv allows the test principal only with NODE_ENV=test and JWT_SECRET.
    const testPrincipal = config.GATEWAY_TEST_PRINCIPAL;
    const identify =
      testPrincipal !== undefined && config.JWT_SECRET !== undefined
        ? testModeIdentify(
            bearer,
            { userId: testPrincipal, roles: listOf(config.GATEWAY_TEST_PRINCIPAL_ROLES) },
            config.JWT_SECRET,
            { iss: config.JWT_ISSUER, aud: config.JWT_AUDIENCE },
          )
        : bearer;
    if (identify !== bearer) {
      log.warn({ userId: testPrincipal }, 'TEST MODE: requests without a token act as the test principal');
    }

    let closing: Promise<void> | null = null;
    const inFlight = new InFlight();
    const cancels = new Set<Promise<unknown>>();
    // Set before anything closes: closing the handler aborts its exchanges at once.
    let stopping = false;
    const handler = createMcpHandler(
      serverFactory(
        {
          nc,
          js: jetstream(nc),
          log,
          timeoutMs: config.GATEWAY_CALL_TIMEOUT_MS,
          catalog,
          dispatcherUrl: config.GATEWAY_DISPATCHER_URL,
          taskMinTimeoutMs: config.GATEWAY_TASK_MIN_TIMEOUT_MS,
          version: VERSION,
          metrics,
          waits: new Waits(config.GATEWAY_MAX_WAITS_PER_USER),
          stopping: () => stopping,
          cancels,
        },
        inFlight,
      ),
      {
        maxRequestBodySize: config.GATEWAY_MAX_BODY_BYTES,
        onerror: (e) => log.debug({ err: e }, 'MCP request refused or failed'),
      },
    );
    // First to close: in-flight MCP exchanges end before NATS goes.
    cleanup.push(() => handler.close());
    const resource = publicUrlOf(config);
    await registerMcpRoutes(app, {
      handler,
      identify,
      resource,
      authorizationServers: listOf(config.GATEWAY_AUTHORIZATION_SERVERS ?? config.JWT_ISSUER),
      allowedOrigins: listOf(config.GATEWAY_ALLOWED_ORIGINS),
      allowedHosts: allowedHostsOf(config, localhostAllowedHostnames()),
      maxBodyBytes: config.GATEWAY_MAX_BODY_BYTES,
      onRefused: (status) => metrics.refused.inc({ status: String(status) }),
    });

    let url: string | null = null;
    if (options.listen !== false) {
      const base = await app.listen({ port: config.GATEWAY_PORT, host: config.HOST });
      url = `${base}${MCP_PATH}`;
    } else {
      await app.ready();
    }
    log.info({ url, resource: resource.href }, 'gateway ready');
    return {
      app,
      nc,
      url,
      close() {
        if (!stopping) {
          stopping = true;
          // Before anything closes: the calls without an idempotency key are cancelled over NATS.
          inFlight.abortAll('the gateway stops');
        }
        closing ??= Promise.race([
          Promise.allSettled([...cancels]),
          new Promise((resolve) => setTimeout(resolve, 5_000).unref()),
        ])
          .then(() => undo())
          .then(() => log.info('gateway stopped'));
        return closing;
      },
    };
  } catch (e) {
    await undo();
    throw e;
  }
}
