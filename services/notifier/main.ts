import { loadConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { startNotifier } from './app.ts';
import { NotifierEnv } from './config.ts';

/** The notifier process: configuration from the environment, clean stop on SIGINT/SIGTERM. */
const log = createLogger('notifier');
try {
  const config = loadConfig(NotifierEnv);
  const notifier = await startNotifier(config);
  log.info({ address: notifier.address }, 'notifier ready');
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    notifier.close().then(
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
  log.fatal({ err }, 'notifier failed to start');
  process.exit(1);
}
