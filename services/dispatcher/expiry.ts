import type { Logger } from '../../lib/log.ts';
import { refOfWait, type ApprovalWaits } from './approvals.ts';
import { handleExecution } from './commands.ts';
import { errorInfo } from './delivery.ts';
import type { DispatcherMetrics } from './metrics.ts';
import type { UserStreams } from './streams.ts';

/** Waits handled per query; the sweep goes on while a batch comes back full. */
const BATCH = 100;

export interface ExpirySweep {
  /** Ends every wait whose deadline passed now; returns how many it ended. */
  sweep(): Promise<number>;
  stop(): Promise<void>;
}

/**
 * Ends the approvals nobody decided in time, from the store alone: at start and every `everyMs`,
 * the open waits whose deadline passed (the waiting list's deadline index, never a scan of the
 * streams) get `Expire` through the decider, which ends them APPROVAL_EXPIRED; those that ended
 * otherwise meanwhile are settled. Every dispatcher sweeps; the decider makes a second `Expire`
 * of the same execution a no-op. The agent's answer goes out when its request comes back
 * (approval.ts), not from here: the sweep needs neither the request nor its reply subject.
 */
export function startExpirySweep(o: {
  waits: ApprovalWaits;
  streams: UserStreams;
  log: Logger;
  everyMs: number;
  metrics: Pick<DispatcherMetrics, 'approvals'>;
  now?: () => Date;
}): ExpirySweep {
  const now = o.now ?? (() => new Date());
  let running: Promise<number> | null = null;
  let stopped = false;

  const once = async (): Promise<number> => {
    let ended = 0;
    for (;;) {
      const due = await o.waits.due(now(), BATCH);
      let settled = 0;
      for (const wait of due) {
        const execution = await o.streams.load(refOfWait(wait));
        const { appended } = await handleExecution(o.streams, execution, {
          type: 'Expire',
          data: { now: now().toISOString() },
        });
        if (appended.length > 0) {
          ended++;
          o.metrics.approvals.inc({ event: 'expired' });
          o.log.info({ userId: wait.userId, executionId: wait.executionId }, 'approval expired');
        }
        if (execution.state.status !== 'awaiting_approval') {
          await o.waits.settle(wait.executionId);
          settled++;
        }
      }
      // A full batch that settled nothing would come back the same: next time.
      if (due.length < BATCH || settled === 0 || stopped) return ended;
    }
  };

  const sweep = (): Promise<number> => {
    running ??= once().finally(() => (running = null));
    return running;
  };
  const tick = () => {
    sweep().catch((e: unknown) =>
      o.log.warn({ err: errorInfo(e) }, 'approval expiry sweep failed; next time'),
    );
  };
  tick();
  const timer = setInterval(tick, o.everyMs);
  timer.unref();
  return {
    sweep,
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running?.catch(() => undefined);
    },
  };
}
