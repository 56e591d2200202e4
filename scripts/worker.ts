/**
 * `npm run worker`: the example tool worker (services/dispatcher/worker.ts) against the stack that
 * `npm start` runs, as its `worker` identity, with its worker secret (both from .toolbus/). Any
 * NATS_URL, NATS_* credential or WORKER_SECRET in the environment is used instead. Its log lines
 * are shown as `npm start` shows the services' (time, name, level, message).
 */
import { fileURLToPath } from 'node:url';
import { runAsLocalIdentity } from './localProcess.ts';

runAsLocalIdentity({
  identity: 'worker',
  entry: fileURLToPath(new URL('../services/dispatcher/worker.ts', import.meta.url)),
  label: 'worker',
});
