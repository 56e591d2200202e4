import type { Logger } from './log.ts';

/** What a service's start function gives back: something that stops it cleanly. */
export interface Stoppable {
  close(): Promise<void>;
}

/**
 * The life of a service process around its `start`, the same for every `services/<name>/main.ts`:
 * a start that fails is logged (`<name> failed to start`, with the reason) and exits 1; a started
 * service logs `<name> ready` with what `ready` picks of it (unless `ready` is null: the service
 * says it itself), then stops once, cleanly, on the first SIGINT or SIGTERM (exit 0, or 1 when
 * the stop fails).
 */
export async function runService<S extends Stoppable>(
  log: Logger,
  name: string,
  start: () => Promise<S>,
  ready: ((service: S) => Record<string, unknown>) | null = () => ({}),
): Promise<S> {
  let service: S;
  try {
    service = await start();
  } catch (e) {
    log.fatal({ err: e }, `${name} failed to start`);
    process.exit(1);
  }
  if (ready) log.info(ready(service), `${name} ready`);
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, `${name} stopping`);
    service.close().then(
      () => process.exit(0),
      (e: unknown) => {
        log.error({ err: e }, `${name} did not stop cleanly`);
        process.exit(1);
      },
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return service;
}
