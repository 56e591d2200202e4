import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import {
  ApproveBody,
  ApprovalsQuery,
  DecisionError,
  DenyBody,
  isAdmin,
  type ApprovalsPage,
  type ExecutionCommand,
  type Principal,
} from '../../contracts/index.ts';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import { authenticateBeforeBody, sendError } from '../../lib/http.ts';
import { CursorError, refOfWait, type ApprovalWait, type ApprovalWaits } from './approvals.ts';
import { handleExecution } from './commands.ts';
import type { DispatcherMetrics } from './metrics.ts';
import { executionView } from './routes.ts';
import type { Execution, UserStreams } from './streams.ts';

export interface ApprovalRouteDeps {
  verifier: TokenVerifier;
  streams: UserStreams;
  waits: ApprovalWaits;
  now: () => Date;
  metrics: Pick<DispatcherMetrics, 'approvals'>;
}

/** Execution ids are lower-case UUIDs; one written in upper case names the same. */
const ExecutionIdParam = z.object({ executionId: z.uuid().transform((id) => id.toLowerCase()) });

/** Zod's issues as one line, each under its path (or under `where`: the query, the body). */
const issues = (e: z.ZodError, where: 'query' | 'body'): string =>
  e.issues.map((i) => `${i.path.join('.') || where}: ${i.message}`).join('; ');

/**
 * The approvers' API (docs/approval.md): `GET /approvals` (the open waits the caller's roles may
 * decide, oldest first, paged), `POST /executions/:executionId/approve` and `.../deny`. An
 * approver's path names no user: the waiting list says whose stream the execution is in. Every
 * decision is the decider's, on the stream as stored, appended with the expected revision: of an
 * approval, a denial, a cancel and the deadline racing, exactly one is recorded.
 */
export function registerApprovalRoutes(app: FastifyInstance, deps: ApprovalRouteDeps): void {
  const verify = async (req: FastifyRequest, reply: FastifyReply): Promise<Principal | null> => {
    try {
      return await deps.verifier.verify(req.headers.authorization);
    } catch (e) {
      if (!(e instanceof AuthError)) throw e;
      await sendError(reply, 'UNAUTHENTICATED', e.message);
      return null;
    }
  };
  // The POST routes check the token before their body is read (onRequest: authenticateFirst).
  const { onRequest: authenticateFirst, authenticate } = authenticateBeforeBody(verify);

  app.get('/approvals', async (req, reply) => {
    const principal = await authenticate(req, reply);
    if (!principal) return reply;
    const query = ApprovalsQuery.safeParse(req.query ?? {});
    if (!query.success) return sendError(reply, 'VALIDATION', issues(query.error, 'query'));
    try {
      const { waits, next } = await deps.waits.pending({
        userId: principal.userId,
        roles: principal.roles,
        now: deps.now(),
        after: query.data.after,
        limit: query.data.limit,
      });
      const page: ApprovalsPage = {
        approvals: waits.map(
          ({ requestId: _r, correlationId: _c, allowSelfApproval: _s, ...shown }) => shown,
        ),
        next,
      };
      return page;
    } catch (e) {
      if (e instanceof CursorError) return sendError(reply, 'VALIDATION', e.message);
      throw e;
    }
  });

  const decide = (kind: 'approve' | 'deny') => async (req: FastifyRequest, reply: FastifyReply) => {
    const principal = await authenticate(req, reply);
    if (!principal) return reply;
    const params = ExecutionIdParam.safeParse(req.params);
    if (!params.success)
      return sendError(reply, 'MALFORMED', 'the path names an execution by its id (a UUID)');
    const body = (kind === 'approve' ? ApproveBody : DenyBody).safeParse(req.body ?? {});
    if (!body.success) return sendError(reply, 'VALIDATION', issues(body.error, 'body'));
    const { executionId } = params.data;

    const wait = await deps.waits.find(executionId);
    if (wait && !mayDecide(principal, wait) && wait.userId === principal.userId) {
      // Their own call: they know it waits, and are told who decides it.
      return sendError(
        reply,
        'SELF_APPROVAL',
        `execution ${executionId} is your own call: an approver (${wait.approverRoles.join(' or ')}) decides it`,
      );
    }
    // Anyone else who may not decide it learns nothing of it: not that it waits, nor whose it is.
    if (!wait || !mayDecide(principal, wait))
      return sendError(reply, 'NOT_FOUND', `no execution ${executionId} asked for approval`);
    const execution = await deps.streams.load(refOfWait(wait));
    const now = deps.now().toISOString();
    const approver = {
      approverId: principal.userId,
      approverRoles: principal.roles,
      argsHash: body.data.argsHash,
      now,
    };
    const command: ExecutionCommand =
      kind === 'approve'
        ? { type: 'Approve', data: { ...approver, reason: body.data.reason } }
        : { type: 'Deny', data: { ...approver, reason: body.data.reason ?? '' } };
    try {
      const { appended } = await handleExecution(deps.streams, execution, command);
      if (appended.length > 0) {
        deps.metrics.approvals.inc({ event: kind === 'approve' ? 'approved' : 'denied' });
      } else {
        // The same decision was recorded already: by this approver it is their retry, else theirs stands.
        const decision = execution.state.status === 'none' ? null : execution.state.approval?.decision;
        if (decision && decision.approverId !== principal.userId) {
          return sendError(reply, 'NOT_AWAITING', `already ${decision.outcome} by ${decision.approverId}`);
        }
      }
    } catch (e) {
      if (!(e instanceof DecisionError)) throw e;
      if (e.code === 'EXPIRED' || (e.code === 'NOT_AWAITING' && expired(execution))) {
        // Nobody decided in time: it ends now (if the sweep has not ended it yet).
        const { appended } = await handleExecution(deps.streams, execution, {
          type: 'Expire',
          data: { now },
        });
        if (appended.length > 0) deps.metrics.approvals.inc({ event: 'expired' });
        await settle(deps, execution);
        return sendError(reply, 'EXPIRED', `the approval's deadline (${wait.deadline}) has passed`);
      }
      // Refused because it no longer waits: the list learns it here too.
      await settle(deps, execution);
      return sendError(reply, e.code, e.message);
    }
    await settle(deps, execution);
    return executionView(execution);
  };

  app.post('/executions/:executionId/approve', { onRequest: authenticateFirst }, decide('approve'));
  app.post('/executions/:executionId/deny', { onRequest: authenticateFirst }, decide('deny'));
}

/**
 * Whether the caller holds one of the roles the wait asked for (admins always do): the decider
 * judges the rest (self-approval, hash, state, deadline).
 */
const mayDecide = (principal: Principal, wait: ApprovalWait): boolean =>
  isAdmin(principal) || wait.approverRoles.some((r) => principal.roles.includes(r));

const expired = (execution: Execution): boolean =>
  execution.state.status === 'failed' && execution.state.code === 'APPROVAL_EXPIRED';

async function settle(deps: ApprovalRouteDeps, execution: Execution): Promise<void> {
  if (execution.state.status !== 'awaiting_approval') await deps.waits.settle(execution.ref.executionId);
}
