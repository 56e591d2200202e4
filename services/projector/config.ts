import { z } from 'zod';
import { CommonEnv, refuseTestHooksInProduction, requireTokenKey, UserTokenEnv } from '../../lib/config.ts';
import { ThreadsEnv } from '../../lib/threads/events.ts';

/** The projector's own variables (all that the rebuild script, which serves no HTTP, needs). */
export const ProjectorStoreEnv = CommonEnv.extend({
  /** Most events applied in one transaction. */
  PROJECTION_BATCH_SIZE: z.coerce.number().int().min(1).max(10_000).default(500),
  /** How long a batch waits for more ready events after its first one. */
  PROJECTION_BATCH_WAIT_MS: z.coerce.number().int().min(0).max(1_000).default(1),
  /** How often a standby instance tries to take the projection's lock. */
  PROJECTOR_LOCK_POLL_MS: z.coerce.number().int().min(10).max(60_000).default(500),
  /** How often the lag gauges are refreshed. */
  PROJECTOR_LAG_INTERVAL_MS: z.coerce.number().int().min(10).max(600_000).default(2_000),
  /** The lag in events is counted up to this many (a higher lag reads as this). */
  PROJECTOR_LAG_CAP: z.coerce.number().int().min(1).max(1_000_000).default(10_000),
  /**
   * Fault injection for tests, honoured only when NODE_ENV=test (refused when NODE_ENV=production): the probability that the process
   * SIGKILLs itself inside a batch transaction, after the read models are written and before the
   * checkpoint is.
   */
  PROJECTOR_FAULT_KILL_BEFORE_CHECKPOINT: z.coerce.number().min(0).max(1).default(0),
  // Checked at start-up; read again by sharedEventThreads, which the rebuild uses.
  ...ThreadsEnv.shape,
});

/** The projector's environment: the common variables, its own, and the user-token ones. */
export const ProjectorEnv = refuseTestHooksInProduction(
  requireTokenKey(ProjectorStoreEnv.extend(UserTokenEnv.shape)),
  {
    PROJECTOR_FAULT_KILL_BEFORE_CHECKPOINT: (v) => typeof v === 'number' && v > 0,
  },
);
export type ProjectorConfig = z.infer<typeof ProjectorEnv>;
