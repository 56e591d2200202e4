import { z } from 'zod';
import { CommonEnv } from '../../lib/config.ts';

const upstream = (fallback: string) =>
  z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).default(fallback);

/**
 * The console's environment. It holds no key: it verifies no token itself but forwards the user's
 * to the dispatcher, projector and auditor, which do (decision 0023).
 */
export const ConsoleEnv = CommonEnv.pick({ NODE_ENV: true, LOG_LEVEL: true, HOST: true }).extend({
  CONSOLE_PORT: CommonEnv.shape.DISPATCHER_PORT.default(8085),
  CONSOLE_DISPATCHER_URL: upstream('http://127.0.0.1:8080'),
  CONSOLE_PROJECTOR_URL: upstream('http://127.0.0.1:8081'),
  CONSOLE_AUDITOR_URL: upstream('http://127.0.0.1:8083'),
  /** How long a forwarded call may take before the console answers 504. */
  CONSOLE_UPSTREAM_TIMEOUT_MS: z.coerce.number().int().min(100).max(600_000).default(30_000),
  /** Forwarded calls in flight at once; beyond it a call is refused 503 OVERLOADED at once. */
  CONSOLE_MAX_IN_FLIGHT: z.coerce.number().int().min(1).max(100_000).default(256),
});
export type ConsoleConfig = z.infer<typeof ConsoleEnv>;
