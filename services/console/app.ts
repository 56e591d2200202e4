import type { FastifyInstance } from 'fastify';
import { createHttpApp } from '../../lib/http.ts';
import type { ConsoleConfig } from './config.ts';
import { registerForwarding } from './forward.ts';
import { registerConsolePage } from './static.ts';

export interface Console {
  app: FastifyInstance;
  /** http://host:port the console listens on. */
  url: string;
  close(): Promise<void>;
}

/**
 * The operator console: its page (static ES modules, no build step) and /api, which forwards the
 * page's calls with the user's token to the dispatcher, projector and auditor (decision 0023).
 * It is ready when it listens: a service that is down shows as an error on the page, not here.
 */
export async function startConsole(config: ConsoleConfig): Promise<Console> {
  const app = createHttpApp({ service: 'console', logLevel: config.LOG_LEVEL, bodyLimit: 64 * 1024 });
  await registerConsolePage(app);
  registerForwarding(app, config);
  await app.listen({ host: config.HOST, port: config.CONSOLE_PORT });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : config.CONSOLE_PORT;
  return { app, url: `http://${config.HOST}:${port}`, close: () => app.close() };
}
