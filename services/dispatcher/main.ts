import { loadConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { runService } from '../../lib/serviceMain.ts';
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

await runService(log, 'dispatcher', () => startDispatcher(config, { log, tools }), null);
