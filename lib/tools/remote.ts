import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import {
  headers,
  RequestError,
  TimeoutError,
  type Msg,
  type NatsConnection,
  type Subscription,
} from '@nats-io/transport-node';
import { z } from 'zod';
import {
  canonicalJson,
  MAX_TIMEOUT_MS,
  AnnouncementRefusal,
  subjects,
  ToolAnnouncement,
  UserId,
  type ToolManifest,
} from '../../contracts/index.ts';
import type { Logger } from '../log.ts';
import type { ToolContext, ToolDefinition } from './define.ts';
import { clip, ToolDefinitionError, ToolInputError, ToolOutputError, ToolRunError } from './errors.ts';
import { ToolRegistry, WORKER_ID_PATTERN, type RunnableTool } from './registry.ts';

/** The queue group every tool worker joins: NATS hands each call to one member. */
export const WORKER_QUEUE = 'toolbus-workers';
/** Header carrying the dispatcher's HMAC over an invocation (and over a cancel). */
export const SIGNATURE_HEADER = 'Toolbus-Signature';
/*
 * Where a dispatcher tells workers to stop an invocation it no longer waits for (cancelled, or
 * timed out on its side) is `subjects.toolCancel(tool)`: `{ invocationId, executionId }`, signed
 * like an invocation. Every worker of that tool listens (no queue group); the one running that
 * invocation aborts its signal.
 */
/** The codes a worker may answer with. */
export const WORKER_ERROR_CODES = [
  'VALIDATION',
  'TOOL_ERROR',
  'OUTPUT_INVALID',
  'TIMEOUT',
  'FORBIDDEN',
  'CANCELLED',
  /** The tool's own backend (an MCP server behind the MCP tool provider) died during the call. */
  'INTERRUPTED',
] as const;
export type WorkerErrorCode = (typeof WORKER_ERROR_CODES)[number];

const NatsSubject = z
  .string()
  .max(256)
  .regex(/^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$/);

/** What a dispatcher sends on `toolbus.tools.run.<name>.<version>`. */
export const Invocation = z.object({
  args: z.unknown(),
  context: z.object({
    userId: UserId,
    roles: z.array(z.string().max(64)).max(32),
    executionId: z.string().min(1).max(128),
    requestId: z.string().min(1).max(128),
    correlationId: z.string().min(1).max(128),
    /** Epoch ms after which the result is no longer wanted: the worker aborts the tool then. */
    deadline: z.number().int(),
    /** Optional: where the worker publishes `{ fraction, message? }` progress messages (the dispatcher sends `toolbus.tools.progress.<tool>.<invocationId>`). */
    progressSubject: NatsSubject.optional(),
    /** Optional: names this invocation in a cancel on `toolbus.tools.cancel.<tool>`. */
    invocationId: z.string().min(1).max(128).optional(),
  }),
});

/** What a dispatcher publishes on `toolbus.tools.cancel.<tool>` (`subjects.toolCancel`). */
export const InvocationCancel = z.object({
  invocationId: z.string().min(1).max(128),
  executionId: z.string().min(1).max(128).optional(),
});
export type InvocationCancel = z.infer<typeof InvocationCancel>;
export type Invocation = z.infer<typeof Invocation>;

/** A worker's answer to an invocation. */
export const InvocationReply = z.discriminatedUnion('ok', [
  z.object({ ok: z.literal(true), result: z.unknown() }),
  z.object({
    ok: z.literal(false),
    error: z.object({
      code: z.string(),
      message: z.string(),
      details: z.record(z.string(), z.unknown()).optional(),
    }),
  }),
]);
export type InvocationReply = z.infer<typeof InvocationReply>;

const Progress = z.object({ fraction: z.number(), message: z.string().optional() });

// --- signatures -----------------------------------------------------------------------------

const hmac = (secret: string, data: string | Uint8Array) =>
  createHmac('sha256', secret).update(data).digest('hex');

function sameHex(a: string, b: string): boolean {
  if (!/^[0-9a-f]{64}$/.test(a) || !/^[0-9a-f]{64}$/.test(b)) return false;
  return timingSafeEqual(Buffer.from(a, 'hex'), Buffer.from(b, 'hex'));
}

/** HMAC-SHA256 (hex) with the worker secret over canonicalJson({ workerId, manifests, issuedAt }). */
export function signAnnouncement(
  body: { workerId: string; manifests: unknown[]; issuedAt: number },
  secret: string,
): string {
  return hmac(
    secret,
    canonicalJson({ workerId: body.workerId, manifests: body.manifests, issuedAt: body.issuedAt }),
  );
}

export function createAnnouncement(
  workerId: string,
  manifests: ToolManifest[],
  secret: string,
  now: number = Date.now(),
): ToolAnnouncement {
  const body = { workerId, manifests, issuedAt: now };
  return { ...body, signature: signAnnouncement(body, secret) };
}

export type AnnouncementCheck =
  { ok: true; announcement: ToolAnnouncement } | { ok: false; reason: string; workerId?: string };

/** Shape, then signature (constant-time compare), then freshness (|now - issuedAt| <= maxSkewMs). */
export function verifyAnnouncement(
  value: unknown,
  secret: string,
  now: number,
  maxSkewMs: number,
): AnnouncementCheck {
  const claimed = (value as { workerId?: unknown } | null)?.workerId;
  const workerId = typeof claimed === 'string' && WORKER_ID_PATTERN.test(claimed) ? claimed : undefined;
  const parsed = ToolAnnouncement.safeParse(value);
  if (!parsed.success) {
    const problems = parsed.error.issues
      .slice(0, 5)
      .map((i) => `${i.path.join('.') || 'announcement'}: ${i.message}`);
    return {
      ok: false,
      reason: `malformed announcement: ${problems.join('; ')}`,
      ...(workerId ? { workerId } : {}),
    };
  }
  const a = parsed.data;
  let expected: string;
  try {
    expected = signAnnouncement(a, secret);
  } catch (e) {
    return { ok: false, reason: `malformed announcement: ${(e as Error).message}`, workerId: a.workerId };
  }
  if (!sameHex(a.signature, expected)) {
    return {
      ok: false,
      reason: 'untrusted announcement: the signature does not match the worker secret',
      workerId: a.workerId,
    };
  }
  const skew = now - a.issuedAt;
  if (Math.abs(skew) > maxSkewMs) {
    return {
      ok: false,
      reason: `stale announcement: issued ${Math.round(skew / 1000)} s ${skew >= 0 ? 'ago' : 'in the future'} (limit ${Math.round(maxSkewMs / 1000)} s)`,
      workerId: a.workerId,
    };
  }
  return { ok: true, announcement: a };
}

/** HMAC-SHA256 (hex) over `toolbus-invoke\n<subject>\n<payload bytes>`: binds an invocation to its tool. */
export function signInvocation(subject: string, payload: string | Uint8Array, secret: string): string {
  return createHmac('sha256', secret).update(`toolbus-invoke\n${subject}\n`).update(payload).digest('hex');
}

// --- the worker side ------------------------------------------------------------------------

export interface ServeToolsOptions {
  workerId: string;
  secret: string;
  /** Announce again this often (ms), so dispatchers that missed one, or expire silent workers, see us. Default 30 000; 0 = only at start and on discover. */
  announceIntervalMs?: number;
  /** Refuse invocations without a valid dispatcher signature (default true). */
  verifyInvocations?: boolean;
  /**
   * A dispatcher refused this worker's announcement of a tool (a name it runs itself, an invalid
   * manifest...). Always logged as an error; `npm run worker` also exits with the reason.
   */
  onRefused?: (refusal: AnnouncementRefusal) => void;
  log?: Logger;
}

export interface ToolServer {
  stop(): Promise<void>;
}

const errorReply = (
  code: WorkerErrorCode,
  message: string,
  details?: Record<string, unknown>,
): InvocationReply => ({
  ok: false,
  error: { code, message: clip(message), ...(details ? { details } : {}) },
});

/**
 * Serves tools as a worker: one queue-group subscription per tool version, a signed announcement
 * at start, on every discover message and every `announceIntervalMs`. Each call is checked
 * (signature, deadline, roles, input), run with an AbortSignal that fires at the deadline, and its
 * output checked before it is returned. `stop()` stops taking calls and waits for the running ones.
 */
export async function serveTools(
  nc: NatsConnection,
  tools: ToolDefinition[],
  opts: ServeToolsOptions,
): Promise<ToolServer> {
  if (!WORKER_ID_PATTERN.test(opts.workerId))
    throw new Error(`worker id ${JSON.stringify(opts.workerId)} must match [A-Za-z0-9_.:-]{1,128}`);
  if (!opts.secret) throw new Error('serveTools needs the worker secret');
  if (tools.length === 0 || tools.length > 100) throw new Error('serveTools needs 1 to 100 tools');
  const local = new ToolRegistry();
  const served = tools.map((def) => ({ def, tool: local.register(def) }));
  const manifests = served.map((s) => s.tool.manifest);
  const verify = opts.verifyInvocations ?? true;
  const log = opts.log;
  const inflight = new Set<Promise<void>>();
  /** Running invocations by invocation id, so a dispatcher's cancel can reach them. */
  const running = new Map<string, AbortController>();
  const subs: Subscription[] = [];
  let stopped = false;

  const handle = async (tool: RunnableTool, msg: Msg): Promise<void> => {
    const { name, version, roles: required } = tool.manifest;
    const id = `${name}@${version}`;
    const respond = (reply: InvocationReply) => {
      try {
        msg.respond(JSON.stringify(reply));
      } catch (e) {
        msg.respond(
          JSON.stringify(
            errorReply('TOOL_ERROR', `${id}: the answer could not be sent: ${(e as Error).message}`),
          ),
        );
      }
    };
    if (!msg.reply) return;
    if (verify) {
      const signature = msg.headers?.get(SIGNATURE_HEADER) ?? '';
      if (!sameHex(signature, signInvocation(msg.subject, msg.data, opts.secret))) {
        log?.warn({ tool: id }, 'invocation refused: not signed with the worker secret');
        return respond(
          errorReply('FORBIDDEN', 'invocation refused: it is not signed with the worker secret'),
        );
      }
    }
    let value: unknown;
    try {
      value = msg.json();
    } catch {
      return respond(errorReply('VALIDATION', 'invocation is not JSON'));
    }
    const parsed = Invocation.safeParse(value);
    if (!parsed.success)
      return respond(errorReply('VALIDATION', `malformed invocation: ${z.prettifyError(parsed.error)}`));
    const { args, context } = parsed.data;
    const remaining = context.deadline - Date.now();
    if (remaining <= 0)
      return respond(errorReply('TIMEOUT', `${id}: the deadline passed before the tool started`));
    if (remaining > MAX_TIMEOUT_MS + 60_000)
      return respond(errorReply('VALIDATION', 'invocation deadline is too far ahead'));
    const missing = required.filter((r) => !context.roles.includes(r));
    if (missing.length > 0)
      return respond(errorReply('FORBIDDEN', `${id} needs the role(s) ${missing.join(', ')}`));

    const controller = new AbortController();
    const timer = setTimeout(
      () => controller.abort(new ToolRunError('TIMEOUT', `${id} did not finish before its deadline`)),
      remaining,
    );
    const invocationId = context.invocationId;
    if (invocationId) running.set(invocationId, controller);
    const progressSubject = context.progressSubject;
    const ctx: ToolContext = {
      signal: controller.signal,
      userId: context.userId,
      roles: context.roles,
      executionId: context.executionId,
      requestId: context.requestId,
      correlationId: context.correlationId,
      progress: (p) => {
        if (progressSubject) nc.publish(progressSubject, JSON.stringify(p));
      },
    };
    const started = Date.now();
    try {
      const result = await tool.run(args, ctx);
      if (Date.now() > context.deadline) {
        // A tool that never yielded (a busy loop) cannot be aborted; its late result is refused.
        return respond(errorReply('TIMEOUT', `${id} ran past its deadline (${Date.now() - started} ms)`));
      }
      respond({ ok: true, result });
    } catch (e) {
      if (e instanceof ToolInputError) return respond(errorReply('VALIDATION', e.message, e.details));
      if (e instanceof ToolOutputError) {
        log?.error({ tool: id, executionId: context.executionId }, 'tool output does not match its schema');
        return respond(errorReply('OUTPUT_INVALID', e.message, e.details));
      }
      if (controller.signal.aborted) {
        const reason: unknown = controller.signal.reason;
        return reason instanceof ToolRunError && reason.code === 'CANCELLED'
          ? respond(errorReply('CANCELLED', reason.message))
          : respond(errorReply('TIMEOUT', `${id} did not finish before its deadline`));
      }
      const code: WorkerErrorCode =
        e instanceof ToolRunError && (WORKER_ERROR_CODES as readonly string[]).includes(e.code)
          ? (e.code as WorkerErrorCode)
          : 'TOOL_ERROR';
      log?.warn(
        { tool: id, executionId: context.executionId, code, err: { message: (e as Error).message } },
        'tool run failed',
      );
      respond(errorReply(code, (e as Error).message || `${id} failed`));
    } finally {
      clearTimeout(timer);
      if (invocationId && running.get(invocationId) === controller) running.delete(invocationId);
    }
  };

  const onCancel = (msg: Msg) => {
    if (verify) {
      const signature = msg.headers?.get(SIGNATURE_HEADER) ?? '';
      if (!sameHex(signature, signInvocation(msg.subject, msg.data, opts.secret))) {
        log?.warn('cancel refused: not signed with the worker secret');
        return;
      }
    }
    let parsed;
    try {
      parsed = InvocationCancel.safeParse(msg.json());
    } catch {
      return; // not JSON: a cancel that names no invocation we can read; the deadline still ends it
    }
    if (!parsed.success) return;
    const controller = running.get(parsed.data.invocationId);
    if (!controller || controller.signal.aborted) return;
    log?.info({ executionId: parsed.data.executionId }, 'invocation cancelled by its dispatcher');
    controller.abort(new ToolRunError('CANCELLED', 'the dispatcher cancelled this invocation'));
  };

  // One announcement per tool, on that tool's subject: the server lets a worker identity announce
  // (and serve) only the tools its permissions name.
  const byName = new Map<string, ToolManifest[]>();
  for (const m of manifests) byName.set(m.name, [...(byName.get(m.name) ?? []), m]);
  const announce = (withdraw = false) => {
    if (nc.isClosed()) return;
    for (const [name, all] of byName) {
      const versions = withdraw ? [] : all;
      try {
        nc.publish(
          subjects.toolAnnounce(name),
          JSON.stringify(createAnnouncement(opts.workerId, versions, opts.secret)),
        );
      } catch (e) {
        log?.warn({ tool: name, err: { message: (e as Error).message } }, 'could not announce a tool');
      }
    }
  };
  const announceNow = () => {
    if (!stopped) announce();
  };

  for (const { tool } of served) {
    subs.push(
      nc.subscribe(subjects.toolRun(tool.manifest.name, tool.manifest.version), {
        queue: WORKER_QUEUE,
        callback: (err, msg) => {
          if (err) {
            log?.error({ err: { message: err.message } }, 'tool subscription failed');
            return;
          }
          const job: Promise<void> = handle(tool, msg)
            .catch((e: unknown) =>
              log?.error({ err: { message: (e as Error).message } }, 'invocation handling failed'),
            )
            .finally(() => inflight.delete(job));
          inflight.add(job);
        },
      }),
    );
  }
  subs.push(nc.subscribe(subjects.toolDiscover, { callback: (err) => (err ? undefined : announceNow()) }));
  const onRefusal = (msg: Msg) => {
    let refusal: AnnouncementRefusal;
    try {
      const parsed = AnnouncementRefusal.safeParse(msg.json());
      if (!parsed.success) return;
      refusal = parsed.data;
    } catch {
      return;
    }
    if (refusal.workerId !== opts.workerId) return;
    log?.error({ tool: refusal.tool, reason: refusal.reason }, 'a dispatcher refused to register this tool');
    opts.onRefused?.(refusal);
  };
  for (const name of byName.keys()) {
    subs.push(
      nc.subscribe(subjects.toolCancel(name), { callback: (err, msg) => (err ? undefined : onCancel(msg)) }),
      nc.subscribe(subjects.toolRefused(name), {
        callback: (err, msg) => (err ? undefined : onRefusal(msg)),
      }),
    );
  }
  // The subscriptions reach the server before the announcement does: a dispatcher that hears
  // the announcement can call at once. The server has answered them by then too: one it refused
  // (this identity may not serve that tool) is closed, and the worker does not pretend to serve.
  await nc.flush();
  const refused = subs.filter((s) => s.isClosed()).map((s) => s.getSubject());
  if (refused.length > 0) {
    await Promise.all(subs.map((s) => s.drain().catch(() => undefined)));
    throw new Error(
      `NATS refused this worker's subscription to ${refused.join(', ')}: its identity may not serve ` +
        'that tool (see docs/security.md)',
    );
  }
  announce();
  await nc.flush();
  const interval = opts.announceIntervalMs ?? 30_000;
  const timer = interval > 0 ? setInterval(announceNow, interval) : undefined;
  timer?.unref();
  log?.info(
    { workerId: opts.workerId, tools: manifests.map((m) => `${m.name}@${m.version}`) },
    'serving tools',
  );

  return {
    async stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      // Withdraw at once: dispatchers stop routing calls here now, not when the worker expires.
      announce(true);
      if (!nc.isClosed()) await Promise.all(subs.map((s) => s.drain().catch(() => undefined)));
      await Promise.allSettled([...inflight]);
    },
  };
}

// --- the dispatcher side --------------------------------------------------------------------

const ANNOUNCE_PREFIX = subjects.toolAnnounceAll.slice(0, -1);

export interface AcceptAnnouncementsOptions {
  secret: string;
  log?: Logger;
  onRefused?: (reason: string, workerId?: string) => void;
  /** How far `issuedAt` may be from this clock. Default 60 000. */
  maxSkewMs?: number;
  /** Forget a worker not heard from for this long (ms). Default 90 000 (three missed announcements); 0 = never. */
  expireAfterMs?: number;
  /** How much longer than the tool's timeout to wait for a worker's answer. Default 2 000. */
  replyMarginMs?: number;
}

function replyError(
  id: string,
  error: { code: string; message: string; details?: Record<string, unknown> | undefined },
): ToolRunError {
  const message = clip(error.message || `${id} failed`);
  switch (error.code) {
    case 'VALIDATION':
      return new ToolInputError(message, error.details);
    case 'OUTPUT_INVALID':
      return new ToolOutputError(message, error.details);
    case 'TIMEOUT':
    case 'FORBIDDEN':
    case 'TOOL_ERROR':
    case 'CANCELLED':
    case 'INTERRUPTED':
      return new ToolRunError(error.code, message, error.details);
    default:
      return new ToolRunError('TOOL_ERROR', message, { ...error.details, workerCode: error.code });
  }
}

/** Sends one invocation to the queue group of a tool and turns the reply into a result or a ToolRunError. */
export async function invokeRemote(
  nc: NatsConnection,
  manifest: ToolManifest,
  args: unknown,
  ctx: ToolContext,
  opts: { secret: string; replyMarginMs?: number },
): Promise<unknown> {
  const id = `${manifest.name}@${manifest.version}`;
  const subject = subjects.toolRun(manifest.name, manifest.version);
  const invocationId = randomUUID();
  // Only the workers of this tool may publish on its progress subjects (scripts/nats-auth.ts).
  const progressSubject = subjects.toolProgress(manifest.name, invocationId);
  const progressSub = nc.subscribe(progressSubject, {
    callback: (err, msg) => {
      if (err) return;
      try {
        const p = Progress.safeParse(msg.json());
        if (p.success) ctx.progress(p.data.message === undefined ? { fraction: p.data.fraction } : p.data);
      } catch {
        // a malformed progress message is dropped
      }
    },
  });
  const endProgress = () => progressSub.unsubscribe();
  ctx.signal.addEventListener('abort', endProgress, { once: true });
  const cancelSubject = subjects.toolCancel(manifest.name);
  // The dispatcher stops waiting (cancel, or its own timeout): tell the worker to stop too.
  const forwardAbort = () => {
    try {
      const cancel = JSON.stringify({
        invocationId,
        executionId: ctx.executionId,
      } satisfies InvocationCancel);
      const ch = headers();
      ch.set(SIGNATURE_HEADER, signInvocation(cancelSubject, cancel, opts.secret));
      nc.publish(cancelSubject, cancel, { headers: ch });
    } catch {
      // the worker stops at its deadline anyway
    }
  };
  ctx.signal.addEventListener('abort', forwardAbort, { once: true });
  const payload: Invocation = {
    args,
    context: {
      userId: ctx.userId,
      roles: [...ctx.roles],
      executionId: ctx.executionId,
      requestId: ctx.requestId,
      correlationId: ctx.correlationId,
      deadline: Date.now() + manifest.timeoutMs,
      progressSubject,
      invocationId,
    },
  };
  const body = JSON.stringify(payload);
  const h = headers();
  h.set(SIGNATURE_HEADER, signInvocation(subject, body, opts.secret));
  const waitMs = manifest.timeoutMs + (opts.replyMarginMs ?? 2_000);
  let msg: Msg;
  try {
    msg = await nc.request(subject, body, { timeout: waitMs, headers: h });
  } catch (e) {
    if (e instanceof RequestError && e.isNoResponders()) {
      throw new ToolRunError(
        'TOOL_ERROR',
        `no tool worker is serving ${id} right now`,
        { reason: 'no_responders' },
        { cause: e },
      );
    }
    if (e instanceof TimeoutError) {
      throw new ToolRunError(
        'TIMEOUT',
        `no answer from a tool worker for ${id} within ${waitMs} ms`,
        undefined,
        { cause: e },
      );
    }
    throw new ToolRunError(
      'TOOL_ERROR',
      clip(`could not call a tool worker for ${id}: ${(e as Error).message}`),
      undefined,
      { cause: e },
    );
  } finally {
    ctx.signal.removeEventListener('abort', endProgress);
    ctx.signal.removeEventListener('abort', forwardAbort);
    endProgress();
  }
  let reply: InvocationReply;
  try {
    const parsed = InvocationReply.safeParse(msg.json());
    if (!parsed.success) throw new Error(parsed.error.issues[0]?.message ?? 'bad shape');
    reply = parsed.data;
  } catch (e) {
    throw new ToolRunError(
      'TOOL_ERROR',
      clip(`the tool worker for ${id} sent a malformed reply: ${(e as Error).message}`),
    );
  }
  if (reply.ok) return reply.result;
  throw replyError(id, reply.error);
}

export interface AnnouncementListener {
  stop(): Promise<void>;
}

/**
 * The dispatcher side: listens on `toolbus.tools.announce.*`, registers the tools of trusted, fresh,
 * well-formed announcements (each callable through `invokeRemote`), refuses everything else with a
 * logged reason (also a manifest naming another tool than the announcement's subject), and asks
 * running workers to announce once at start (`toolbus.tools.discover`). A worker's latest
 * announcement on a tool's subject is the whole list of the versions of that tool it serves (empty:
 * withdrawn); a worker silent for `expireAfterMs` is forgotten, all its tools.
 */
export async function acceptAnnouncements(
  nc: NatsConnection,
  registry: ToolRegistry,
  opts: AcceptAnnouncementsOptions,
): Promise<AnnouncementListener> {
  const maxSkewMs = opts.maxSkewMs ?? 60_000;
  const expireAfterMs = opts.expireAfterMs ?? 90_000;
  const log = opts.log;
  const lastSeen = new Map<string, number>();

  const refuse = (reason: string, workerId?: string) => {
    log?.warn({ workerId, reason }, 'tool announcement refused');
    try {
      opts.onRefused?.(reason, workerId);
    } catch {
      // a listener's failure does not change the refusal
    }
  };
  /**
   * A signed announcement refused: also tell the workers of that tool, so the one it names learns
   * it is not serving. Unsigned or stale ones are not echoed (their worker id proves nothing).
   */
  const refuseSigned = (reason: string, workerId: string, tool: string, manifest: unknown) => {
    refuse(reason, workerId);
    const version = (manifest as { version?: unknown } | null)?.version;
    const refusal: AnnouncementRefusal = {
      workerId,
      tool: typeof version === 'string' ? clip(`${tool}@${version}`, 200) : tool,
      reason: clip(reason, 2_000),
    };
    try {
      nc.publish(subjects.toolRefused(tool), JSON.stringify(refusal));
    } catch (e) {
      log?.warn(
        { workerId, tool, err: { message: (e as Error).message } },
        'could not tell a worker of its refusal',
      );
    }
  };

  const onAnnouncement = (msg: Msg) => {
    const subjectTool = msg.subject.slice(ANNOUNCE_PREFIX.length);
    let value: unknown;
    try {
      value = msg.json();
    } catch {
      return refuse('malformed announcement: not JSON');
    }
    const check = verifyAnnouncement(value, opts.secret, Date.now(), maxSkewMs);
    if (!check.ok) return refuse(check.reason, check.workerId);
    const { workerId, manifests } = check.announcement;
    const kept: string[] = [];
    for (const m of manifests) {
      const claimed = (m as { name?: unknown } | null)?.name;
      if (claimed !== subjectTool) {
        refuseSigned(
          `announcement on ${msg.subject} names another tool (${JSON.stringify(claimed)}): refused`,
          workerId,
          subjectTool,
          m,
        );
        continue;
      }
      let tool: RunnableTool | undefined;
      const invoke = (args: unknown, ctx: ToolContext) => invokeRemote(nc, tool!.manifest, args, ctx, opts);
      try {
        const named = m as { name?: unknown; version?: unknown } | null;
        const known =
          named && typeof named.name === 'string' && typeof named.version === 'string'
            ? registry.workersOf(named.name, named.version).includes(workerId)
            : false;
        tool = registry.accept(m, workerId, invoke);
        kept.push(`${tool.manifest.name}@${tool.manifest.version}`);
        if (!known)
          log?.info(
            { workerId, tool: `${tool.manifest.name}@${tool.manifest.version}` },
            'remote tool registered',
          );
      } catch (e) {
        refuseSigned(
          e instanceof ToolDefinitionError ? e.message : `announcement refused: ${(e as Error).message}`,
          workerId,
          subjectTool,
          m,
        );
      }
    }
    registry.remove(workerId, kept, subjectTool);
    lastSeen.set(workerId, Date.now());
  };

  const sub = nc.subscribe(subjects.toolAnnounceAll, {
    callback: (err, msg) => {
      if (err) {
        log?.error({ err: { message: err.message } }, 'announcement subscription failed');
        return;
      }
      onAnnouncement(msg);
    },
  });
  const sweeper =
    expireAfterMs > 0
      ? setInterval(
          () => {
            const now = Date.now();
            for (const [workerId, seen] of lastSeen) {
              if (now - seen <= expireAfterMs) continue;
              lastSeen.delete(workerId);
              registry.remove(workerId);
              log?.warn({ workerId }, 'tool worker silent too long: its tools are forgotten');
            }
          },
          Math.max(250, Math.min(10_000, Math.floor(expireAfterMs / 3))),
        )
      : undefined;
  sweeper?.unref();
  await nc.flush();
  nc.publish(subjects.toolDiscover);
  await nc.flush();

  return {
    async stop() {
      clearInterval(sweeper);
      if (!nc.isClosed()) await sub.drain().catch(() => undefined);
    },
  };
}
