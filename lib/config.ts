import { z } from 'zod';

/**
 * Configuration comes from environment variables only, checked here once. A bad value stops
 * start-up with a message that names the variable. Defaults point at the local services; keys have none.
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

/** A whole number of seconds within [min, max]. */
const seconds = (fallback: number, min: number, max: number) =>
  z
    .string()
    .regex(/^\d{1,9}$/, 'must be a whole number of seconds')
    .transform(Number)
    .pipe(z.number().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`))
    .default(fallback);

/**
 * A key shared by the parts of Toolbus (HMAC). There is no default: a key written in the repository
 * is known to everyone, so a service without its key does not start (`npm start` and the tests
 * generate random ones). Generate one with `openssl rand -hex 32`.
 */
export const SecretKey = z
  .string({
    error: (issue) => (issue.input === undefined ? 'must be set (at least 32 random characters)' : undefined),
  })
  .min(32, 'must be at least 32 characters');

/** A whole-number variable between `min` and `max`, `fallback` when unset. */
export const intVar = (fallback: number, min: number, max: number) =>
  z
    .string()
    .regex(/^\d{1,9}$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`))
    .default(fallback);

export const CommonEnv = z.object({
  NODE_ENV: z.enum(['development', 'test', 'production']).default('development'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** One NATS server's URL, or several separated by commas (a cluster's nodes: any one will do). */
  NATS_URL: z
    .string()
    .regex(
      /^(nats|tls|ws|wss):\/\/[^\s,]+(,\s*(nats|tls|ws|wss):\/\/[^\s,]+)*$/,
      'must be a nats:// URL, or several separated by commas',
    )
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
  /** redis:// or rediss://, or unix:///path/to/redis.sock?password=… for a Unix socket. */
  REDIS_URL: z
    .string()
    .regex(/^(rediss?:\/\/\S+|unix:\/\/\/\S+)$/, 'must be a redis://, rediss:// or unix:/// URL')
    .default('redis://127.0.0.1:6379'),
  /** Set to use KurrentDB (EventStoreDB) as the event store; PostgreSQL otherwise. */
  KURRENTDB_URL: z
    .string()
    .regex(
      /^(esdb|esdb\+discover|kurrentdb|kurrentdb\+discover):\/\/\S+$/,
      'must be an esdb:// or kurrentdb:// URL',
    )
    .optional(),
  /**
   * Group commit in the PostgreSQL event store (docs/decisions/0028-group-commit.md): on unless
   * `0` or `false`, which commits every append in a transaction of its own (for comparison).
   */
  EVENTSTORE_GROUP_COMMIT: z
    .enum(['0', '1', 'false', 'true'], 'must be 0, 1, false or true')
    .transform((v) => v === '1' || v === 'true')
    .default(true),
  HOST: z.string().default('127.0.0.1'),
  DISPATCHER_PORT: port(8080),
  PROJECTOR_PORT: port(8081),
  NOTIFIER_PORT: port(8082),
});
export type CommonConfig = z.infer<typeof CommonEnv>;

/**
 * The variables of a service that verifies user tokens (dispatcher, projector, notifier, auditor):
 * `CommonEnv.extend(UserTokenEnv.shape).superRefine(requireTokenKey)`. Rules in
 * docs/decisions/0011-user-tokens-jwks.md.
 */
export const UserTokenEnv = z.object({
  /** HS256 key of user tokens (development, scripts, or a deployment without an identity provider). */
  JWT_SECRET: SecretKey.optional(),
  /** The identity provider's key set: RS256, ES256 and EdDSA tokens are verified against it. */
  JWKS_URL: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).optional(),
  /** When set, a token's `iss` must be exactly this. */
  JWT_ISSUER: z.string().min(1).max(1024).optional(),
  /** When set, a token's `aud` must be (or contain) this. */
  JWT_AUDIENCE: z.string().min(1).max(1024).optional(),
  /** Longest lifetime (`exp` - `iat`) a token may have; every token must carry `iat`. */
  JWT_MAX_LIFETIME_S: seconds(86_400, 1, 366 * 86_400),
  /** Clock skew allowed when checking `exp`, `nbf` and `iat`. */
  JWT_CLOCK_TOLERANCE_S: seconds(5, 0, 300),
});
export type UserTokenConfig = z.infer<typeof UserTokenEnv>;

/**
 * The rule that goes with UserTokenEnv, `requireTokenKey(CommonEnv.extend({...UserTokenEnv.shape}))`:
 * tokens must be verifiable, with a secret, a key set or both. It is checked even when other
 * variables are wrong, so that every problem is reported at once.
 */
export function requireTokenKey<S extends z.ZodObject>(schema: S): S {
  return schema.refine(
    (config) => {
      const c = config as Partial<UserTokenConfig>;
      return c.JWT_SECRET !== undefined || c.JWKS_URL !== undefined;
    },
    {
      path: ['JWT_SECRET'],
      message: 'must be set (at least 32 random characters), unless JWKS_URL is set',
      when: (payload) => typeof payload.value === 'object' && payload.value !== null,
    },
  );
}

/**
 * Test tools and fault hooks must not be switched on in a production start by accident: each
 * hook named here (with the test that it is on) is refused when NODE_ENV=production, naming the
 * variable. Tests and development starts (NODE_ENV=test or development, the default) may use them.
 */
export function refuseTestHooksInProduction<S extends z.ZodObject>(
  schema: S,
  hooks: Record<string, (value: unknown) => boolean>,
): S {
  return schema.superRefine((config, ctx) => {
    const c = config as Record<string, unknown>;
    if (c['NODE_ENV'] !== 'production') return;
    for (const [name, isOn] of Object.entries(hooks)) {
      if (!isOn(c[name])) continue;
      ctx.addIssue({
        code: 'custom',
        path: [name],
        message: 'is a test hook: refused when NODE_ENV=production (unset it, or start with NODE_ENV=test)',
      });
    }
  });
}

/** Parses `env` against `schema` (usually `CommonEnv.extend({...})`). Empty strings count as unset. */
export function loadConfig<S extends z.ZodObject>(
  schema: S,
  env: Record<string, string | undefined> = process.env,
): z.infer<S> {
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = schema.safeParse(cleaned);
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map((i) => `${i.path.join('.') || '(env)'}: ${i.message}`));
  }
  return parsed.data;
}
