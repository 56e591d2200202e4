import { z } from 'zod';
import { CommonEnv, ConfigError, loadConfig } from '../../lib/config.ts';

const DEV_SIGNING_KEY = 'toolbus-development-audit-key-do-not-use-in-production';

/** Decimal digits only, as lib/config.ts reads the other ports. */
const port = (fallback: number) =>
  z
    .string()
    .regex(/^\d{1,5}$/, 'must be a port number (0-65535)')
    .transform(Number)
    .pipe(z.number().max(65535, 'must be a port number (0-65535)'))
    .default(fallback);

export const AuditorEnv = CommonEnv.extend({
  AUDITOR_PORT: port(8083),
  /** HMAC-SHA256 key that checkpoints are signed and checked with. */
  AUDIT_SIGNING_KEY: z.string().min(32, 'must be at least 32 characters').default(DEV_SIGNING_KEY),
  /** Who the CLI records as the auditor (defaults to the OS user). */
  AUDITOR_ID: z.string().min(1).max(128).optional(),
});
export type AuditorConfig = z.infer<typeof AuditorEnv>;

/** loadConfig, and in production the development signing key is refused too. */
export function loadAuditorConfig(env: Record<string, string | undefined> = process.env): AuditorConfig {
  const config = loadConfig(AuditorEnv, env);
  if (config.NODE_ENV === 'production' && config.AUDIT_SIGNING_KEY === DEV_SIGNING_KEY) {
    throw new ConfigError(['AUDIT_SIGNING_KEY: must be set in production']);
  }
  return config;
}
