import { createLogger } from '../../lib/log.ts';
import { runService } from '../../lib/serviceMain.ts';
import { loadAuditorServerConfig } from './config.ts';
import { startAuditor } from './server.ts';

/** The auditor's HTTP service: `npx tsx services/auditor/main.ts` (port AUDITOR_PORT, default 8083). */
const log = createLogger('auditor');
await runService(
  log,
  'auditor',
  () => startAuditor(loadAuditorServerConfig()),
  (a) => ({ url: a.url }),
);
