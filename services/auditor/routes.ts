import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { ROLES, UserId, type Principal } from '../../contracts/index.ts';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { answerError, errorBody } from '../../lib/http.ts';
import type { AuditAction, AuditEntry, AuditLog, AuditOutcome } from './auditLog.ts';
import { CheckpointRefusedError, openCheckpoint, signCheckpoint, type Checkpoint } from './checkpoint.ts';
import { AuditError } from './errors.ts';
import { replayHistory, TIMELINE_HEADER, toNdjson, toTimelineLine, type ReplayRange } from './replay.ts';
import { verifyHistory, type VerifyReport } from './verify.ts';

/**
 * The auditor's HTTP surface, as an encapsulated fastify plugin:
 *   GET  /audit/users/:userId/events?fromRevision&toRevision&from&to&format=ndjson|timeline
 *   GET  /audit/users/:userId/verify
 *   POST /audit/users/:userId/verify       { checkpoint }   verify against an earlier checkpoint
 *   POST /audit/users/:userId/checkpoint   { checkpoint? }  verify, then issue a signed checkpoint
 * Bearer token with role `auditor` or `admin` (401 without a valid token, 403 without the role).
 * Every access, and every refused one, is recorded in `audit_log`.
 */
export interface AuditRoutesOptions {
  store: EventStore;
  auditLog: AuditLog;
  tokens: TokenVerifier;
  signingKey: string;
  now?: () => Date;
}

export const AUDIT_ROLES: readonly string[] = [ROLES.auditor, ROLES.admin];

const Params = z.strictObject({ userId: UserId });
const revision = z
  .string()
  .regex(/^\d{1,15}$/, 'must be a non-negative integer')
  .transform(Number);
const time = z.iso.datetime({ offset: true }).transform((s) => new Date(s));
const EventsQuery = z
  .strictObject({
    fromRevision: revision.optional(),
    toRevision: revision.optional(),
    from: time.optional(),
    to: time.optional(),
    format: z.enum(['ndjson', 'timeline']).default('ndjson'),
  })
  .refine(
    (q) => q.fromRevision === undefined || q.toRevision === undefined || q.fromRevision <= q.toRevision,
    {
      message: 'fromRevision must not be after toRevision',
    },
  )
  .refine((q) => !q.from || !q.to || q.from.getTime() <= q.to.getTime(), {
    message: 'from must not be after to',
  });
const CheckpointBodyIn = z.object({ checkpoint: z.unknown().optional() }).nullish();

const issues = (e: z.ZodError): string =>
  e.issues.map((i) => `${i.path.join('.') || '(query)'}: ${i.message}`).join('; ');

export async function auditRoutes(app: FastifyInstance, options: AuditRoutesOptions): Promise<void> {
  const { store, auditLog, tokens, signingKey } = options;
  const now = options.now ?? (() => new Date());

  app.setErrorHandler((error: Error & { statusCode?: number }, request, reply) => {
    if (error instanceof AuditError) {
      if (error.code === 'UNAUTHENTICATED') void reply.header('www-authenticate', 'Bearer');
      return reply.code(error.status).send(errorBody(error.code, error.message, error.details));
    }
    return answerError(error, request, reply);
  });

  /** Authenticates, checks the role, and records the access (or its refusal) before anything is read. */
  async function admit(
    request: FastifyRequest,
    action: AuditAction,
    range: Record<string, unknown> = {},
  ): Promise<{ principal: Principal; userId: string; auditId: number }> {
    let principal: Principal;
    try {
      principal = await tokens.verify(request.headers.authorization);
    } catch (e) {
      if (e instanceof AuthError)
        throw new AuditError('UNAUTHENTICATED', `a valid bearer token is required (${e.reason})`);
      throw e;
    }
    const params = Params.safeParse(request.params);
    if (!params.success) throw new AuditError('BAD_REQUEST', issues(params.error));
    const entry: AuditEntry = {
      actor: principal.userId,
      actorRoles: principal.roles,
      via: 'http',
      action,
      subjectUser: params.data.userId,
      range,
    };
    if (!principal.roles.some((r) => AUDIT_ROLES.includes(r))) {
      await auditLog.denied(entry, 'role auditor or admin required');
      request.log.warn(
        { actor: principal.userId, subject: params.data.userId, action },
        'audit access denied',
      );
      throw new AuditError('FORBIDDEN', 'the auditor or admin role is required');
    }
    let auditId: number;
    try {
      auditId = await auditLog.begin(entry);
    } catch (e) {
      request.log.error({ err: e }, 'audit log unavailable');
      throw new AuditError(
        'AUDIT_LOG_UNAVAILABLE',
        'the access cannot be recorded, so it is refused; try again later',
      );
    }
    return { principal, userId: params.data.userId, auditId };
  }

  app.get('/audit/users/:userId/events', async (request, reply) => {
    // The query is checked before admission only to record the range asked for.
    const query = EventsQuery.safeParse(request.query ?? {});
    const { userId, auditId } = await admit(
      request,
      'replay',
      query.success ? rangeOf(query.data) : { invalid: true },
    );
    if (!query.success) {
      await auditLog.end(auditId, 'refused', 0, { reason: issues(query.error) });
      throw new AuditError('BAD_REQUEST', issues(query.error));
    }
    const { format } = query.data;
    const items = replayHistory(store, userId, query.data);
    const log = request.log;
    async function* body(): AsyncGenerator<string> {
      let count = 0;
      let outcome: AuditOutcome = 'aborted';
      let detail: unknown;
      try {
        if (format === 'timeline') yield TIMELINE_HEADER;
        for await (const item of items) {
          count++;
          yield format === 'ndjson' ? toNdjson(item) : toTimelineLine(item);
        }
        outcome = 'ok';
      } catch (e) {
        outcome = 'error';
        detail = { error: (e as Error).message };
        log.error({ err: e, userId }, 'replay failed');
        yield format === 'ndjson'
          ? `${JSON.stringify(errorBody('REPLAY_FAILED', 'the replay stopped: the event store failed'))}\n`
          : '# ERROR: the replay stopped: the event store failed\n';
        throw e;
      } finally {
        await auditLog.end(auditId, outcome, count, detail);
      }
    }
    return reply
      .header('x-audit-id', String(auditId))
      .header('cache-control', 'no-store')
      .type(format === 'ndjson' ? 'application/x-ndjson; charset=utf-8' : 'text/plain; charset=utf-8')
      .send(Readable.from(body(), { objectMode: false, encoding: 'utf8' }));
  });

  async function runVerify(
    request: FastifyRequest,
    action: 'verify' | 'checkpoint',
  ): Promise<{ report: VerifyReport; principal: Principal; auditId: number }> {
    const body = CheckpointBodyIn.safeParse(request.body);
    const given = body.success ? body.data?.checkpoint : undefined;
    const { principal, userId, auditId } = await admit(
      request,
      action,
      given ? { againstCheckpoint: true } : {},
    );
    let checkpoint: Checkpoint | null = null;
    try {
      if (!body.success) throw new AuditError('BAD_REQUEST', issues(body.error));
      if (given !== undefined) checkpoint = openCheckpoint(given, signingKey, userId);
    } catch (e) {
      const reason = (e as Error).message;
      await auditLog.end(auditId, 'refused', 0, { reason });
      if (e instanceof CheckpointRefusedError) throw new AuditError('CHECKPOINT_REFUSED', reason);
      throw e;
    }
    let report: VerifyReport;
    try {
      report = await verifyHistory(store, userId, { checkpoint, now });
    } catch (e) {
      await auditLog.end(auditId, 'error', null, { error: (e as Error).message });
      throw e;
    }
    await auditLog.end(
      auditId,
      report.ok ? 'ok' : 'broken',
      report.events,
      report.break ? { break: report.break } : undefined,
    );
    return { report, principal, auditId };
  }

  const verifyHandler = async (request: FastifyRequest, reply: FastifyReply) => {
    const { report, auditId } = await runVerify(request, 'verify');
    return reply.header('x-audit-id', String(auditId)).send(report);
  };
  app.get('/audit/users/:userId/verify', verifyHandler);
  app.post('/audit/users/:userId/verify', verifyHandler);

  app.post('/audit/users/:userId/checkpoint', async (request, reply) => {
    const { report, principal, auditId } = await runVerify(request, 'checkpoint');
    reply.header('x-audit-id', String(auditId));
    if (!report.ok)
      throw new AuditError('HISTORY_BROKEN', 'the history does not verify: no checkpoint issued', report);
    if (report.lastEventId === null)
      throw new AuditError('NOT_FOUND', `user ${report.userId} has no events to checkpoint`);
    const checkpoint = signCheckpoint(
      {
        userId: report.userId,
        stream: report.stream,
        revision: report.lastRevision,
        eventId: report.lastEventId,
        hash: report.lastHash,
        events: report.events,
        issuedAt: report.finishedAt,
        issuedBy: principal.userId,
      },
      signingKey,
    );
    return reply.send({ checkpoint, report });
  });
}

function rangeOf(q: ReplayRange & { format: string }): Record<string, unknown> {
  return {
    ...(q.fromRevision !== undefined ? { fromRevision: q.fromRevision } : {}),
    ...(q.toRevision !== undefined ? { toRevision: q.toRevision } : {}),
    ...(q.from ? { from: q.from.toISOString() } : {}),
    ...(q.to ? { to: q.to.toISOString() } : {}),
    format: q.format,
  };
}
