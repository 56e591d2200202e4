import { loadConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
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

try {
  const gateway = await startGateway(config, { log });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'signal received');
    gateway.close().then(
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
  log.fatal({ err: { message: (e as Error).message, name: (e as Error).name } }, 'gateway failed to start');
  process.exit(1);
}
