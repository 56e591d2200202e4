import { loadConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { runService } from '../../lib/serviceMain.ts';
import { startNotifier } from './app.ts';
import { NotifierEnv } from './config.ts';

/** The notifier process: configuration from the environment, clean stop on SIGINT/SIGTERM. */
const log = createLogger('notifier');
await runService(
  log,
  'notifier',
  () => startNotifier(loadConfig(NotifierEnv)),
  (n) => ({ address: n.address }),
);
