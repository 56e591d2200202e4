import { ProtocolError, ProtocolErrorCode, Server, type McpServerFactory } from '@modelcontextprotocol/server';
import type { Principal } from '../../contracts/index.ts';
import { execute, idempotencyKeyOf, type CallDeps } from './calls.ts';
import type { ToolCatalog } from './catalog.ts';
import { resultOf, toolOf } from './mapping.ts';

/** What the HTTP layer verified, handed to the factory as the SDK's `authInfo.extra`. */
export interface Caller {
  principal: Principal;
  token: string;
}

export interface ServerDeps extends CallDeps {
  catalog: ToolCatalog;
  version: string;
}

/**
 * Calls in flight by user and JSON-RPC id, so that `notifications/cancelled` reaches its call:
 * the SDK serves each HTTP request with a fresh server (stateless), so the notification arrives
 * at another instance than the call it names. Keyed by user, a client can only cancel its own
 * user's calls.
 */
export class InFlight {
  readonly #calls = new Map<string, AbortController>();

  track(userId: string, id: string | number, controller: AbortController): () => void {
    const key = `${userId}\n${typeof id}:${id}`;
    this.#calls.set(key, controller);
    return () => {
      if (this.#calls.get(key) === controller) this.#calls.delete(key);
    };
  }

  cancel(userId: string, id: string | number, reason: string | undefined): void {
    this.#calls.get(`${userId}\n${typeof id}:${id}`)?.abort(new Error(reason ?? 'cancelled by the client'));
  }
}

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
  return ({ authInfo }) => {
    const { principal, token } = callerOf(authInfo?.extra);
    const server = new Server(
      { name: 'toolbus', title: 'Toolbus', version: deps.version },
      {
        capabilities: { tools: { listChanged: false } },
        instructions:
          'Every tools/call is a durable, audited Toolbus execution. Send _meta["io.toolbus/idempotencyKey"] to retry safely.',
      },
    );

    server.setRequestHandler('tools/list', async () => {
      const tools = (await deps.catalog.listFor(principal)).map(toolOf).filter((t) => t !== null);
      return { tools };
    });

    server.setRequestHandler('tools/call', async (request, ctx) => {
      const { name, arguments: args = {}, _meta } = request.params;
      const tool = await deps.catalog.find(principal, name);
      if (!tool) throw new ProtocolError(ProtocolErrorCode.InvalidParams, `Unknown tool: ${name}`);
      const idempotencyKey = idempotencyKeyOf(_meta);
      const progressToken = ctx.mcpReq._meta?.progressToken;

      const controller = new AbortController();
      const forward = () => controller.abort(ctx.mcpReq.signal.reason);
      if (ctx.mcpReq.signal.aborted) forward();
      ctx.mcpReq.signal.addEventListener('abort', forward, { once: true });
      const untrack = inFlight.track(principal.userId, ctx.mcpReq.id, controller);
      try {
        const answer = await execute(deps, {
          principal,
          token,
          tool,
          args,
          idempotencyKey,
          signal: controller.signal,
          ...(progressToken !== undefined
            ? {
                onProgress: ({ fraction, message }) =>
                  void ctx.mcpReq
                    .notify({
                      method: 'notifications/progress',
                      params: { progressToken, progress: fraction, total: 1, ...(message ? { message } : {}) },
                    })
                    .catch(() => undefined), // the client went away; the answer path says so
              }
            : {}),
        });
        return resultOf(answer, tool);
      } finally {
        untrack();
        ctx.mcpReq.signal.removeEventListener('abort', forward);
      }
    });

    server.setNotificationHandler('notifications/cancelled', (n) => {
      if (n.params.requestId !== undefined) inFlight.cancel(principal.userId, n.params.requestId, n.params.reason);
    });
    return server;
  };
}
