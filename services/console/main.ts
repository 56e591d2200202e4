import { loadConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { runService } from '../../lib/serviceMain.ts';
import { startConsole } from './app.ts';
import { ConsoleEnv } from './config.ts';

/** The console process: configuration from the environment, clean stop on SIGINT/SIGTERM. */
const log = createLogger('console');
await runService(
  log,
  'console',
  () => startConsole(loadConfig(ConsoleEnv)),
  (c) => ({ url: c.url }),
);
