import { createHash } from 'node:crypto';
import {
  ProtocolError,
  ProtocolErrorCode,
  Server,
  type CallToolResult,
  type McpServerFactory,
  type ServerContext,
} from '@modelcontextprotocol/server';
import { checkJsonShape, type Principal, type ToolManifest } from '../../contracts/index.ts';
import { execute, idempotencyKeyOf, requestOf, type Call } from './calls.ts';
import { ERROR_META_KEY, resultOf, toolOf } from './mapping.ts';
import type { GatewayMetrics } from './metrics.ts';
import type { Waits } from './waits.ts';
import { cancelTask, getTask, startTask, TaskParams, taskResult, type TaskDeps } from './tasks.ts';

/** What the HTTP layer verified, handed to the factory as the SDK's `authInfo.extra`. */
export interface Caller {
  principal: Principal;
  token: string;
}

export interface ServerDeps extends TaskDeps {
  version: string;
  /** A tool with at least this timeout may be called as a task. */
  taskMinTimeoutMs: number;
  metrics: GatewayMetrics;
  /** Calls and task results each user has waiting, bounded. */
  waits: Waits;
}

/**
 * Calls in flight by user and JSON-RPC id, so that `notifications/cancelled` reaches its call:
 * the SDK serves each HTTP request with a fresh server (stateless), so the notification arrives
 * at another instance than the call it names. Keyed by user, a client can only cancel its own
 * user's calls. Two clients of one user number their requests alike (each from 0) and nothing
 * but the token says which one a notification came from: a cancel reaches the one call with that
 * id made with the same token (`clientOf`), else the user's only call with that id (a client that
 * renewed its token since), else none. Cancelling another client's call would be worse than not
 * cancelling (docs/mcp.md).
 */
export class InFlight {
  readonly #calls = new Map<string, Map<AbortController, string>>();

  track(userId: string, id: string | number, controller: AbortController, client = ''): () => void {
    const key = `${userId}\n${typeof id}:${id}`;
    const held = this.#calls.get(key) ?? new Map<AbortController, string>();
    held.set(controller, client);
    this.#calls.set(key, held);
    return () => {
      held.delete(controller);
      if (held.size === 0 && this.#calls.get(key) === held) this.#calls.delete(key);
    };
  }

  /** Ends every call in flight (the gateway stops): each decides what becomes of its execution. */
  abortAll(reason: string): void {
    for (const held of this.#calls.values())
      for (const controller of held.keys()) controller.abort(new Error(reason));
  }

  /** Cancels the call the notification names (see above); false when none or it is ambiguous. */
  cancel(userId: string, id: string | number, reason: string | undefined, client = ''): boolean {
    const held = [
      ...(this.#calls.get(`${userId}\n${typeof id}:${id}`) ?? new Map<AbortController, string>()),
    ];
    const same = held.filter(([, c]) => c === client);
    const target = same.length === 1 ? same[0] : same.length === 0 && held.length === 1 ? held[0] : undefined;
    target?.[0].abort(new Error(reason ?? 'cancelled by the client'));
    return target !== undefined;
  }
}

/** Which client a request came from, as far as the gateway can tell: a digest of its token. */
export const clientOf = (caller: Caller): string =>
  createHash('sha256').update(caller.token).digest('base64url');

/** A result's outcome label: `completed`, or its error code. */
const outcomeOf = (result: CallToolResult): string =>
  (result._meta?.[ERROR_META_KEY] as { code?: string } | undefined)?.code ?? 'completed';

export const callerOf = (extra: Record<string, unknown> | undefined): Caller => {
  const caller = extra?.['caller'] as Caller | undefined;
  // The HTTP layer sets it on every request that reaches the SDK; without it nothing is served.
  if (!caller) throw new ProtocolError(ProtocolErrorCode.InternalError, 'no verified caller');
  return caller;
};

/**
 * The factory the SDK calls per HTTP request (both protocol eras): a low-level server whose
 * tools are the registry's, filtered by the caller's roles, each call one Toolbus execution.
 */
export function serverFactory(deps: ServerDeps, inFlight: InFlight): McpServerFactory {
  return ({ authInfo, era }) => {
    const caller = callerOf(authInfo?.extra);
    const { principal, token } = caller;
    // Tasks exist in the 2025-11-25 revision only: SDK v2 serves no tasks/* on 2026-07-28 (docs/mcp.md).
    const tasks = era === 'legacy';
    // A call may run long because its tool does, or because it waits for a person's approval.
    const longRunning = (m: ToolManifest) =>
      tasks && (m.timeoutMs >= deps.taskMinTimeoutMs || m.approval !== undefined);
    const server = new Server(
      { name: 'toolbus', title: 'Toolbus', version: deps.version },
      {
        capabilities: {
          tools: { listChanged: false },
          // 2025 era: tasks, and logging (accepted; Toolbus's tools send no MCP log messages).
          ...(tasks ? { tasks: { requests: { tools: { call: {} } }, cancel: {} }, logging: {} } : {}),
        },
        instructions:
          'Every tools/call is a durable, audited Toolbus execution. Send _meta["io.toolbus/idempotencyKey"] to retry safely.',
      },
    );

    server.setRequestHandler('tools/list', async () => {
      const tools = (await deps.catalog.listFor(principal))
        .map((m) => toolOf(m, { asTask: longRunning(m) }))
        .filter((t) => t !== null);
      return { tools };
    });

    server.setRequestHandler('tools/call', async (request, ctx) => {
      const { name, arguments: args = {}, _meta } = request.params;
      // The dispatcher's rule, checked first: hashing and forwarding the arguments recurse, so
      // nesting far deeper (a 1 MB body holds 100 000 levels) would overflow the stack here.
      const shape = checkJsonShape(args);
      if (shape)
        throw new ProtocolError(
          ProtocolErrorCode.InvalidParams,
          `arguments at ${shape.path}: ${shape.problem}`,
        );
      const tool = await deps.catalog.find(principal, name);
      if (!tool) throw new ProtocolError(ProtocolErrorCode.InvalidParams, `Unknown tool: ${name}`);
      const call = { principal, token, tool, args, idempotencyKey: idempotencyKeyOf(_meta) };
      const counted = <R extends CallToolResult>(result: R, outcome = outcomeOf(result)): R => {
        deps.metrics.calls.inc({ outcome });
        return result;
      };
      const release = deps.waits.enter(principal.userId);
      if (!release) {
        // Refused before anything is recorded: a failed call the client may retry, as a dispatcher's OVERLOADED.
        return counted(
          resultOf(
            {
              status: 'failed',
              requestId: requestOf(call).requestId,
              executionId: null,
              correlationId: null,
              error: { code: 'OVERLOADED', message: deps.waits.refusal() },
            },
            tool,
          ),
        );
      }
      deps.metrics.inFlight.inc();
      try {
        if ((request.params as { task?: unknown }).task === undefined)
          return counted(await callNow(call, ctx));
        if (!longRunning(tool)) {
          // The spec's answer to a task-augmented call of a tool that does not support tasks.
          throw new ProtocolError(ProtocolErrorCode.MethodNotFound, `${name} does not run as a task`);
        }
        const started = await startTask(deps, call);
        // `content` beside `task`: the SDK's tools/call result check wants it on every result.
        return 'task' in started
          ? counted({ content: [], task: started.task }, 'task')
          : counted(resultOf(started.result, tool));
      } catch (e) {
        deps.metrics.calls.inc({ outcome: 'refused' });
        throw e;
      } finally {
        deps.metrics.inFlight.dec();
        release();
      }
    });

    /** One call, answered when the execution ends; the client giving up cancels it. */
    const callNow = async (call: Omit<Call, 'signal' | 'onProgress'>, ctx: ServerContext) => {
      const progressToken = ctx.mcpReq._meta?.progressToken;
      // notifications/cancelled reaches the call through `inFlight` (another server instance gets it).
      const controller = new AbortController();
      const forward = () => controller.abort(ctx.mcpReq.signal.reason);
      if (ctx.mcpReq.signal.aborted) forward();
      ctx.mcpReq.signal.addEventListener('abort', forward, { once: true });
      const untrack = inFlight.track(principal.userId, ctx.mcpReq.id, controller, clientOf(caller));
      try {
        const answer = await execute(deps, {
          ...call,
          signal: controller.signal,
          ...(progressToken !== undefined
            ? {
                onProgress: ({ fraction, message }) =>
                  void ctx.mcpReq
                    .notify({
                      method: 'notifications/progress',
                      params: {
                        progressToken,
                        progress: fraction,
                        total: 1,
                        ...(message ? { message } : {}),
                      },
                    })
                    .catch(() => undefined), // the client went away; the answer path says so
              }
            : {}),
        });
        return resultOf(answer, call.tool);
      } finally {
        untrack();
        ctx.mcpReq.signal.removeEventListener('abort', forward);
      }
    };

    if (tasks) {
      server.setRequestHandler('tasks/get', { params: TaskParams }, (p) => getTask(deps, caller, p.taskId));
      server.setRequestHandler('tasks/result', { params: TaskParams }, async (p, ctx) => {
        const release = deps.waits.enter(principal.userId);
        if (!release)
          throw new ProtocolError(ProtocolErrorCode.InternalError, `OVERLOADED: ${deps.waits.refusal()}`);
        try {
          return await taskResult(deps, caller, p.taskId, ctx.mcpReq.signal);
        } finally {
          release();
        }
      });
      server.setRequestHandler('tasks/cancel', { params: TaskParams }, (p) =>
        cancelTask(deps, caller, p.taskId),
      );
    }

    server.setNotificationHandler('notifications/cancelled', (n) => {
      const id = n.params.requestId;
      if (id !== undefined && !inFlight.cancel(principal.userId, id, n.params.reason, clientOf(caller)))
        deps.log.info(
          { userId: principal.userId, requestId: id },
          'notifications/cancelled: no call, or more than one, has that id; nothing cancelled',
        );
    });
    return server;
  };
}
