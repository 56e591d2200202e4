import { loadConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { toolsFromConfiguration } from '../../lib/toolbusConfig.ts';
import { startDispatcher } from './app.ts';
import { DispatcherEnv } from './config.ts';

/** The dispatcher process: config from the environment, start, stop cleanly on SIGINT/SIGTERM. */
const config = (() => {
  try {
    return loadConfig(DispatcherEnv);
  } catch (e) {
    // One line that names every bad variable: what `npm start` shows as the reason.
    createLogger('dispatcher').fatal({ err: e }, 'invalid configuration');
    process.exit(2);
  }
})();
const log = createLogger('dispatcher', config.LOG_LEVEL);
// The tools of the configuration file (toolbus.json or TOOLBUS_CONFIG), run in this process.
const tools = await toolsFromConfiguration().catch((e: unknown) => {
  log.fatal({ err: e }, 'invalid configuration');
  process.exit(2);
});

try {
  const dispatcher = await startDispatcher(config, { log, tools });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'signal received');
    dispatcher.close().then(
      () => process.exit(0),
      (e: unknown) => {
        log.error({ err: { message: (e as Error).message } }, 'stopping failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
} catch (e) {
  log.fatal(
    { err: { message: (e as Error).message, name: (e as Error).name } },
    'dispatcher failed to start',
  );
  process.exit(1);
}
