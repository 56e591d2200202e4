import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type pg from 'pg';
import { z } from 'zod';
import {
  ALL_USERS_READERS,
  ErrorCode,
  httpStatusOfCode,
  isAdmin,
  mayReadAllUsers,
  UserId,
  type Principal,
} from '../../contracts/index.ts';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import { answerError, errorBody } from '../../lib/http.ts';
import { LATENCY_BUCKETS, quantile } from './histogram.ts';
import { LIVE_SCHEMA } from './migrations.ts';
import { mergeToolRows, type ExecutionRow, type ToolMetricsRow } from './model.ts';
import { rowMappers } from './sql.ts';

/** The query API's errors; their HTTP statuses are the catalogue's (contracts/errors.ts). */
export const API_ERROR_CODES = ['UNAUTHENTICATED', 'FORBIDDEN', 'NOT_FOUND', 'BAD_REQUEST'] as const;
export const API_ERRORS = Object.fromEntries(API_ERROR_CODES.map((c) => [c, httpStatusOfCode(c)])) as Record<
  (typeof API_ERROR_CODES)[number],
  number
>;
export type ApiErrorCode = keyof typeof API_ERRORS;

export class ApiError extends Error {
  constructor(
    readonly code: ApiErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
    this.name = 'ApiError';
  }
  get status(): number {
    return API_ERRORS[this.code];
  }
}

const ExecutionStatus = z.enum([
  'requested',
  'awaiting_approval',
  'approved',
  'executing',
  'completed',
  'failed',
]);
const Timestamp = z.iso.datetime({ offset: true, message: 'must be an ISO 8601 date-time with a time zone' });
const ToolFilter = z.string().min(1).max(64);

const ListExecutionsQuery = z
  .strictObject({
    userId: UserId.optional(),
    status: ExecutionStatus.optional(),
    /** The error code of a failed execution (`CANCELLED`, `TIMEOUT`, ...). */
    code: ErrorCode.optional(),
    tool: ToolFilter.optional(),
    from: Timestamp.optional(),
    to: Timestamp.optional(),
    limit: z.coerce.number().int().min(1).max(500).default(50),
    cursor: z.string().min(1).max(256).optional(),
  })
  .refine((q) => !q.from || !q.to || Date.parse(q.from) < Date.parse(q.to), {
    message: 'from must be before to',
  });

const ExecutionParams = z.strictObject({ id: z.uuid({ message: 'execution id must be a UUID' }) });
const UserParams = z.strictObject({ userId: UserId });
const ToolMetricsQuery = z
  .strictObject({ tool: ToolFilter.optional(), from: Timestamp.optional(), to: Timestamp.optional() })
  .refine((q) => !q.from || !q.to || Date.parse(q.from) < Date.parse(q.to), {
    message: 'from must be before to',
  });
/** Who may read across users, as the refusals name them. */
const READERS = `holders of ${ALL_USERS_READERS.join(', ')}`;

/** At most a day of minutes in one series answer (1,440 points per tool). */
export const SERIES_MAX_RANGE_MS = 24 * 60 * 60_000;
const SERIES_DEFAULT_RANGE_MS = 60 * 60_000;
const ToolSeriesQuery = z
  .strictObject({ tool: ToolFilter.optional(), from: Timestamp.optional(), to: Timestamp.optional() })
  .transform((q) => {
    const to = q.to ? Date.parse(q.to) : Date.now();
    const from = q.from ? Date.parse(q.from) : to - SERIES_DEFAULT_RANGE_MS;
    return { tool: q.tool, from: new Date(from).toISOString(), to: new Date(to).toISOString() };
  })
  .refine((q) => Date.parse(q.from) < Date.parse(q.to), { message: 'from must be before to' })
  .refine((q) => Date.parse(q.to) - Date.parse(q.from) <= SERIES_MAX_RANGE_MS, {
    message: 'the range may span at most 24 hours',
  });

const Cursor = z.tuple([z.string().regex(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/), z.uuid()]);

function parse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (!r.success) {
    throw new ApiError('BAD_REQUEST', `invalid ${what}: ${z.prettifyError(r.error)}`, {
      issues: r.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message })),
    });
  }
  return r.data;
}

const encodeCursor = (at: string, id: string): string =>
  Buffer.from(JSON.stringify([at, id])).toString('base64url');
function decodeCursor(cursor: string): [string, string] {
  try {
    return Cursor.parse(JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')));
  } catch {
    throw new ApiError('BAD_REQUEST', 'invalid query: cursor is not one this API gave out');
  }
}

/** An execution as the API shows it. */
export function executionView(r: ExecutionRow) {
  return {
    executionId: r.executionId,
    userId: r.userId,
    requestId: r.requestId,
    correlationId: r.correlationId,
    tool: r.tool,
    version: r.version,
    status: r.status,
    attempts: r.attempts,
    requestedAt: r.requestedAt,
    startedAt: r.startedAt,
    finishedAt: r.finishedAt,
    durationMs: r.durationMs,
    error: r.errorCode === null ? null : { code: r.errorCode, message: r.errorMessage },
    cached: r.cached,
    events: r.eventCount,
    lastRevision: r.lastRevision,
    cancelRequestedAt: r.cancelRequestedAt,
  };
}

/** Per-tool metrics as the API shows them: counts, error rate, latency quantiles. */
export function toolMetricsView(r: ToolMetricsRow) {
  const ran = r.completed + r.failed;
  const round = (v: number | null) => (v === null ? null : Math.round(v * 1000) / 1000);
  return {
    tool: r.tool,
    total: ran + r.refused,
    completed: r.completed,
    failed: r.failed,
    refused: r.refused,
    cached: r.cached,
    /** Failures among executions that ran; refusals are not the tool's errors. */
    errorRate: ran === 0 ? null : r.failed / ran,
    errorCodes: r.errorCodes,
    latencyMs: {
      count: r.latencyCount,
      mean: round(r.latencyCount === 0 ? null : r.latencySumMs / r.latencyCount),
      max: r.latencyMaxMs,
      p50: round(quantile(r.latencyHistogram, 0.5, r.latencyMaxMs)),
      p95: round(quantile(r.latencyHistogram, 0.95, r.latencyMaxMs)),
      p99: round(quantile(r.latencyHistogram, 0.99, r.latencyMaxMs)),
    },
  };
}

/** One minute of a tool's series: the metrics view of that minute's row. */
function seriesPoint(r: ToolMetricsRow) {
  const { tool: _tool, ...view } = toolMetricsView(r);
  return { minute: r.minute!, ...view };
}

export interface QueryApiOptions {
  pool: pg.Pool;
  verifier: TokenVerifier;
  /** What GET /projection reports (admins only). */
  status?: () => Promise<Record<string, unknown>>;
}

/**
 * GET /executions, /executions/:id, /tools/metrics, /users/:userId/activity (and /projection for
 * admins), each behind a Bearer token. A user sees their own rows; the roles of ALL_USERS_READERS
 * (admin, operator, approver, auditor: the operator console's readers) see every user's.
 */
export async function registerQueryApi(app: FastifyInstance, options: QueryApiOptions): Promise<void> {
  const { pool, verifier } = options;
  const t = (table: string) => `${LIVE_SCHEMA}.${table}`;

  await app.register(async (scope) => {
    scope.setErrorHandler((error: Error & { statusCode?: number }, request, reply) => {
      if (error instanceof ApiError) {
        if (error.code === 'UNAUTHENTICATED') void reply.header('www-authenticate', 'Bearer');
        return reply.code(error.status).send(errorBody(error.code, error.message, error.details));
      }
      return answerError(error, request, reply);
    });

    const principalOf = new WeakMap<FastifyRequest, Principal>();
    scope.addHook('onRequest', async (request: FastifyRequest, _reply: FastifyReply) => {
      try {
        principalOf.set(request, await verifier.verify(request.headers.authorization));
      } catch (e) {
        if (e instanceof AuthError) throw new ApiError('UNAUTHENTICATED', e.message, { reason: e.reason });
        throw e;
      }
    });
    const who = (request: FastifyRequest): Principal => principalOf.get(request)!;

    scope.get('/executions', async (request) => {
      const principal = who(request);
      const q = parse(ListExecutionsQuery, request.query, 'query');
      let userId: string | null = principal.userId;
      if (mayReadAllUsers(principal)) userId = q.userId ?? null;
      else if (q.userId !== undefined && q.userId !== principal.userId) {
        throw new ApiError('FORBIDDEN', `only ${READERS} may list another user's executions`);
      }
      const after = q.cursor ? decodeCursor(q.cursor) : null;
      const { rows } = await pool.query<Record<string, unknown> & { cursor_at: string }>(
        `select *, to_char(requested_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as cursor_at
           from ${t('executions')}
          where ($1::text is null or user_id = $1)
            and ($2::text is null or status = $2)
            and ($3::text is null or tool = $3)
            and ($4::timestamptz is null or requested_at >= $4)
            and ($5::timestamptz is null or requested_at < $5)
            and ($6::timestamptz is null or (requested_at, execution_id) < ($6::timestamptz, $7::uuid))
            and ($9::text is null or error_code = $9)
          order by requested_at desc, execution_id desc
          limit $8`,
        [
          userId,
          q.status ?? null,
          q.tool ?? null,
          q.from ?? null,
          q.to ?? null,
          after?.[0] ?? null,
          after?.[1] ?? null,
          q.limit + 1,
          q.code ?? null,
        ],
      );
      const page = rows.slice(0, q.limit);
      const last = page[page.length - 1];
      return {
        items: page.map((r) => executionView(rowMappers.execution(r))),
        nextCursor:
          rows.length > q.limit && last ? encodeCursor(last.cursor_at, String(last['execution_id'])) : null,
      };
    });

    scope.get('/executions/:id', async (request) => {
      const principal = who(request);
      const { id } = parse(ExecutionParams, request.params, 'execution id');
      const { rows } = await pool.query<Record<string, unknown>>(
        `select * from ${t('executions')} where execution_id = $1`,
        [id],
      );
      const row = rows[0] ? rowMappers.execution(rows[0]) : undefined;
      // Another user's execution is answered exactly like a missing one.
      if (!row || (row.userId !== principal.userId && !mayReadAllUsers(principal))) {
        throw new ApiError('NOT_FOUND', `no execution ${id}`);
      }
      return executionView(row);
    });

    scope.get('/tools/metrics', async (request) => {
      const q = parse(ToolMetricsQuery, request.query, 'query');
      let rows: ToolMetricsRow[];
      if (!q.from && !q.to) {
        const r = await pool.query<Record<string, unknown>>(
          `select * from ${t('tool_metrics')} where ($1::text is null or tool = $1) order by tool`,
          [q.tool ?? null],
        );
        rows = r.rows.map(rowMappers.toolMetrics);
      } else {
        const r = await pool.query<Record<string, unknown>>(
          `select * from ${t('tool_metrics_minute')}
            where ($1::text is null or tool = $1)
              and ($2::timestamptz is null or minute >= date_trunc('minute', $2::timestamptz))
              and ($3::timestamptz is null or minute < $3::timestamptz)
            order by tool, minute`,
          [q.tool ?? null, q.from ?? null, q.to ?? null],
        );
        rows = mergeToolRows(r.rows.map(rowMappers.toolMinute));
      }
      return {
        from: q.from ?? null,
        to: q.to ?? null,
        granularity: q.from || q.to ? 'minute' : 'all-time',
        histogramBuckets: LATENCY_BUCKETS,
        tools: rows.map(toolMetricsView),
      };
    });

    // Per-minute points for charts (the operator console's): only minutes with activity are listed.
    scope.get('/tools/metrics/series', async (request) => {
      const q = parse(ToolSeriesQuery, request.query, 'query');
      const { rows } = await pool.query<Record<string, unknown>>(
        `select * from ${t('tool_metrics_minute')}
          where ($1::text is null or tool = $1)
            and minute >= date_trunc('minute', $2::timestamptz) and minute < $3::timestamptz
          order by tool, minute`,
        [q.tool ?? null, q.from, q.to],
      );
      const byTool = new Map<string, ReturnType<typeof seriesPoint>[]>();
      for (const row of rows.map(rowMappers.toolMinute)) {
        const points = byTool.get(row.tool) ?? [];
        points.push(seriesPoint(row));
        byTool.set(row.tool, points);
      }
      return {
        from: q.from,
        to: q.to,
        granularity: 'minute',
        tools: [...byTool].map(([tool, points]) => ({ tool, points })),
      };
    });

    scope.get('/users/:userId/activity', async (request) => {
      const principal = who(request);
      const { userId } = parse(UserParams, request.params, 'user id');
      if (userId !== principal.userId && !mayReadAllUsers(principal)) {
        throw new ApiError('FORBIDDEN', `only ${READERS} may read another user's activity`);
      }
      const { rows } = await pool.query<Record<string, unknown>>(
        `select * from ${t('user_activity')} where user_id = $1`,
        [userId],
      );
      if (!rows[0]) throw new ApiError('NOT_FOUND', `no activity recorded for user ${userId}`);
      const r = rowMappers.userActivity(rows[0]);
      return { ...r, inFlight: r.executions - r.completed - r.failed - r.refused };
    });

    scope.get('/projection', async (request) => {
      if (!isAdmin(who(request)))
        throw new ApiError('FORBIDDEN', 'only admins may read the projection status');
      return options.status ? options.status() : {};
    });
  });
}
