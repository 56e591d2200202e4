import { createLogger } from '../../lib/log.ts';
import { loadAuditorServerConfig } from './config.ts';
import { startAuditor } from './server.ts';

/** The auditor's HTTP service: `npx tsx services/auditor/main.ts` (port AUDITOR_PORT, default 8083). */
const log = createLogger('auditor');
try {
  const config = loadAuditorServerConfig();
  const auditor = await startAuditor(config);
  log.info({ url: auditor.url }, 'auditor ready');
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'auditor stopping');
    auditor.close().then(
      () => process.exit(0),
      (e: unknown) => {
        log.error({ err: e }, 'auditor did not stop cleanly');
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
} catch (e) {
  log.fatal({ err: e }, 'auditor failed to start');
  process.exitCode = 1;
}
