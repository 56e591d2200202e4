import { loadConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { runService } from '../../lib/serviceMain.ts';
import { startGateway } from './app.ts';
import { GatewayEnv } from './config.ts';

/** The gateway process: config from the environment, start, stop cleanly on SIGINT/SIGTERM. */
const config = (() => {
  try {
    return loadConfig(GatewayEnv);
  } catch (e) {
    createLogger('gateway').fatal({ err: e }, 'invalid configuration');
    process.exit(2);
  }
})();
const log = createLogger('gateway', config.LOG_LEVEL);

await runService(log, 'gateway', () => startGateway(config, { log }), null);
