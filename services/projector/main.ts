import { loadConfig } from '../../lib/config.ts';
import { createLogger } from '../../lib/log.ts';
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
if (faultRate > 0) log.warn({ faultRate }, 'fault injection on: may SIGKILL itself before a checkpoint');

let projector: Awaited<ReturnType<typeof startProjector>>;
try {
  projector = await startProjector(config, {
    ...(faultRate > 0
      ? {
          beforeCheckpoint: () => {
            if (Math.random() < faultRate) process.kill(process.pid, 'SIGKILL');
          },
        }
      : {}),
  });
} catch (e) {
  log.fatal({ err: e as Error }, 'projector could not start');
  process.exit(1);
}
log.info({ url: projector.url, pid: process.pid }, 'projector ready');

let stopping = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'projector stopping');
    projector
      .close()
      .then(() => process.exit(0))
      .catch((e: unknown) => {
        log.error({ err: e as Error }, 'projector did not stop cleanly');
        process.exit(1);
      });
  });
}
