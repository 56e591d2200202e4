import { z } from 'zod';
import { CommonEnv, loadConfig, requireTokenKey, SecretKey, UserTokenEnv } from '../../lib/config.ts';
import { ThreadsEnv } from '../../lib/threads/events.ts';

/** Decimal digits only, as lib/config.ts reads the other ports. */
const port = (fallback: number) =>
  z
    .string()
    .regex(/^\d{1,5}$/, 'must be a port number (0-65535)')
    .transform(Number)
    .pipe(z.number().max(65535, 'must be a port number (0-65535)'))
    .default(fallback);

/** What the CLI needs: the event store, the audit log and the signing key (it verifies no tokens). */
export const AuditorEnv = CommonEnv.extend({
  AUDITOR_PORT: port(8083),
  /** HMAC-SHA256 key that checkpoints are signed and checked with (no default). */
  AUDIT_SIGNING_KEY: SecretKey,
  /** Who the CLI records as the auditor (defaults to the OS user). */
  AUDITOR_ID: z.string().min(1).max(128).optional(),
  // Checked at start-up; read again by sharedEventThreads, which verification uses.
  ...ThreadsEnv.shape,
});
export type AuditorConfig = z.infer<typeof AuditorEnv>;

/** The HTTP service's environment: the CLI's and the user-token variables. */
export const AuditorServerEnv = requireTokenKey(AuditorEnv.extend(UserTokenEnv.shape));
export type AuditorServerEnvConfig = z.infer<typeof AuditorServerEnv>;

/** The CLI's configuration. */
export function loadAuditorConfig(env: Record<string, string | undefined> = process.env): AuditorConfig {
  return loadConfig(AuditorEnv, env);
}

/** The HTTP service's configuration. */
export function loadAuditorServerConfig(
  env: Record<string, string | undefined> = process.env,
): AuditorServerEnvConfig {
  return loadConfig(AuditorServerEnv, env);
}
