import { loadConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { startConsole } from './app.ts';
import { ConsoleEnv } from './config.ts';

/** The console process: configuration from the environment, clean stop on SIGINT/SIGTERM. */
const log = createLogger('console');
try {
  const served = await startConsole(loadConfig(ConsoleEnv));
  log.info({ url: served.url }, 'console ready');
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    served.close().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error({ err }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
} catch (err) {
  log.fatal({ err }, 'console failed to start');
  process.exit(1);
}
