import { loadConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
import { runService } from '../../lib/serviceMain.ts';
import { startProjector } from './app.ts';
import { ProjectorEnv } from './config.ts';

/** The projector process: `node --import tsx services/projector/main.ts`. */
const config = (() => {
  try {
    return loadConfig(ProjectorEnv);
  } catch (e) {
    // One line that names every bad variable: what `npm start` shows as the reason.
    createLogger('projector').fatal({ err: e }, 'invalid configuration');
    process.exit(2);
  }
})();
const log = createLogger('projector', config.LOG_LEVEL);

const faultRate = config.NODE_ENV === 'test' ? config.PROJECTOR_FAULT_KILL_BEFORE_CHECKPOINT : 0;
if (faultRate > 0)
  log.warn({ faultRate }, 'fault injection on: may SIGKILL itself inside a batch, before its commit');

await runService(
  log,
  'projector',
  () =>
    startProjector(config, {
      ...(faultRate > 0
        ? {
            beforeCommit: () => {
              if (Math.random() < faultRate) process.kill(process.pid, 'SIGKILL');
            },
          }
        : {}),
    }),
  (p) => ({ url: p.url, pid: process.pid }),
);
