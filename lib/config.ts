import { z } from 'zod';

/**
 * Configuration comes from environment variables only, checked here once. A bad value stops
 * start-up with a message that names the variable. Defaults point at the local services.
 */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

/** Decimal digits only: `z.coerce.number()` would take " " as port 0 (a random port) and "0x50" as 80. */
const port = (fallback: number) =>
  z
    .string()
    .regex(/^\d{1,5}$/, 'must be a port number (0-65535)')
    .transform(Number)
    .pipe(z.number().max(65535, 'must be a port number (0-65535)'))
    .default(fallback);
const DEV_SECRET = 'toolbus-development-secret-do-not-use-in-production';

export const CommonEnv = z.object({
  NODE_ENV: z.enum(['development', 'test', 'production']).default('development'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  NATS_URL: z
    .string()
    .regex(/^(nats|tls|ws|wss):\/\/\S+$/, 'must be a nats:// URL')
    .default('nats://127.0.0.1:4222'),
  /**
   * The process's NATS identity (lib/nats.ts): an nkey seed (or a file holding it), a creds file,
   * a user and password, or a token; and TLS files. `npm start` generates nkeys (.toolbus/nats/).
   */
  NATS_NKEY_SEED: z
    .string()
    .regex(/^SU[A-Z2-7]{56}$/, 'must be a user nkey seed (SU...)')
    .optional(),
  NATS_NKEY_SEED_FILE: z.string().optional(),
  NATS_CREDS: z.string().optional(),
  NATS_USER: z.string().optional(),
  NATS_PASSWORD: z.string().optional(),
  NATS_TOKEN: z.string().optional(),
  NATS_TLS_CA: z.string().optional(),
  NATS_TLS_CERT: z.string().optional(),
  NATS_TLS_KEY: z.string().optional(),
  /** The identity's id on the bus when it is not the nkey's public key or the user name. */
  NATS_IDENTITY: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}')
    .optional(),
  DATABASE_URL: z
    .string()
    .regex(/^postgres(ql)?:\/\/\S+$/, 'must be a postgres:// URL')
    .default('postgres://postgres@127.0.0.1:5432/test'),
  REDIS_URL: z
    .string()
    .regex(/^rediss?:\/\/\S+$/, 'must be a redis:// URL')
    .default('redis://127.0.0.1:6379'),
  /** Set to use KurrentDB (EventStoreDB) as the event store; PostgreSQL otherwise. */
  KURRENTDB_URL: z
    .string()
    .regex(
      /^(esdb|esdb\+discover|kurrentdb|kurrentdb\+discover):\/\/\S+$/,
      'must be an esdb:// or kurrentdb:// URL',
    )
    .optional(),
  /** HS256 key that user tokens are signed with. */
  JWT_SECRET: z.string().min(32, 'must be at least 32 characters').default(DEV_SECRET),
  /** Shared secret that tool workers sign their announcements with. */
  WORKER_SECRET: z.string().min(32, 'must be at least 32 characters').default(`${DEV_SECRET}-workers`),
  HOST: z.string().default('127.0.0.1'),
  DISPATCHER_PORT: port(8080),
  PROJECTOR_PORT: port(8081),
  NOTIFIER_PORT: port(8082),
});
export type CommonConfig = z.infer<typeof CommonEnv>;

/**
 * Parses `env` against `schema` (usually `CommonEnv.extend({...})`). Empty strings count as unset.
 * In production the development secrets are refused.
 */
export function loadConfig<S extends z.ZodObject>(
  schema: S,
  env: Record<string, string | undefined> = process.env,
): z.infer<S> {
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = schema.safeParse(cleaned);
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map((i) => `${i.path.join('.') || '(env)'}: ${i.message}`));
  }
  const config = parsed.data as Record<string, unknown>;
  if (config['NODE_ENV'] === 'production') {
    const insecure = ['JWT_SECRET', 'WORKER_SECRET'].filter((k) => String(config[k]).startsWith(DEV_SECRET));
    if (insecure.length > 0) throw new ConfigError(insecure.map((k) => `${k}: must be set in production`));
  }
  return parsed.data;
}
