import { z } from 'zod';
import { canonicalJson, ToolManifest } from '../../contracts/index.ts';
import { sensitiveProblems, toManifest, type ToolContext, type ToolDefinition } from './define.ts';
import { clip, ToolDefinitionError, ToolInputError, ToolOutputError, ToolRunError } from './errors.ts';

export { ToolInputError, ToolOutputError, ToolRunError } from './errors.ts';

export type ToolSource = 'local' | `worker:${string}`;

/** A resolved, runnable tool, local or remote. */
export interface RunnableTool {
  manifest: ToolManifest;
  source: ToolSource;
  /**
   * Validates args against the input schema (throws ToolInputError with zod's message), runs,
   * validates output (throws ToolOutputError). Honors ctx.signal: when it fires, the returned
   * promise rejects with `signal.reason` at once, even if the tool itself ignores the signal.
   */
  run(args: unknown, ctx: ToolContext): Promise<unknown>;
}

/** How the registry reaches a remote tool: sends the (already checked) arguments, returns the result. */
export type RemoteInvoke = (args: unknown, ctx: ToolContext) => Promise<unknown>;

export const WORKER_ID_PATTERN = /^[A-Za-z0-9_.:-]{1,128}$/;

interface Entry {
  tool: RunnableTool;
  /** canonicalJson of the manifest: two announcements are the same tool when these are equal. */
  key: string;
  local: boolean;
  /** For a remote tool: the workers that announced it, first one first. */
  workers: string[];
}

const toolId = (name: string, version: string) => `${name}@${version}`;

function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

const issuesOf = (error: z.ZodError) =>
  error.issues.slice(0, 20).map((i) => ({ path: i.path.map(String).join('.'), message: i.message }));

/** Rejects with `signal.reason` as soon as the signal fires, whatever `promise` does. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    promise.catch(() => undefined);
    return Promise.reject(signal.reason as Error);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.finally(() => signal.removeEventListener('abort', onAbort)).then(resolve, reject);
  });
}

/**
 * The context a tool sees: progress clamped to 0..1 with the message cut to 500 characters, never
 * throwing into the tool, and silent once the run has ended (a tool that ignored its timeout
 * cannot report progress after the answer).
 */
function guardContext(ctx: ToolContext): { ctx: ToolContext; close(): void } {
  let open = true;
  const guarded: ToolContext = {
    signal: ctx.signal,
    userId: ctx.userId,
    roles: ctx.roles,
    executionId: ctx.executionId,
    requestId: ctx.requestId,
    correlationId: ctx.correlationId,
    progress(p) {
      if (!open || ctx.signal.aborted) return;
      const fraction = Number.isFinite(p?.fraction) ? Math.min(1, Math.max(0, p.fraction)) : 0;
      const message = typeof p?.message === 'string' ? p.message.slice(0, 500) : undefined;
      try {
        ctx.progress(message === undefined ? { fraction } : { fraction, message });
      } catch {
        // progress is advice; a failing listener must not fail the tool
      }
    },
  };
  return { ctx: guarded, close: () => (open = false) };
}

/** What a tool threw, as the dispatcher should see it. */
function normalizeThrown(e: unknown, signal: AbortSignal): Error {
  if (signal.aborted) return signal.reason as Error;
  if (e instanceof Error) return e;
  return new ToolRunError(
    'TOOL_ERROR',
    clip(`tool threw ${typeof e === 'string' ? e : (JSON.stringify(e) ?? String(e))}`),
  );
}

/** A zod schema from a worker's JSON Schema, to check calls before they travel; undefined if it cannot be built. */
function validatorFor(schema: Record<string, unknown>): z.ZodType | undefined {
  try {
    return z.fromJSONSchema(schema);
  } catch {
    return undefined;
  }
}

/**
 * The tools this dispatcher can run: defined in process (`register`) or announced by tool workers
 * (`accept`). One entry per name@version. A worker's announcement of a name@version already known
 * is accepted only when its manifest is identical (another instance of the same tool in the queue
 * group); a different manifest, or any clash with an in-process tool, is refused.
 */
export class ToolRegistry {
  readonly #tools = new Map<string, Map<string, Entry>>();

  #get(name: string, version: string): Entry | undefined {
    return this.#tools.get(name)?.get(version);
  }

  #put(manifest: ToolManifest, entry: Entry): void {
    let versions = this.#tools.get(manifest.name);
    if (!versions) this.#tools.set(manifest.name, (versions = new Map<string, Entry>()));
    versions.set(manifest.version, entry);
  }

  #delete(name: string, version: string): void {
    const versions = this.#tools.get(name);
    versions?.delete(version);
    if (versions?.size === 0) this.#tools.delete(name);
  }

  /** An in-process tool. Throws ToolDefinitionError for a bad definition or a name@version already known. */
  register(def: ToolDefinition): RunnableTool {
    const manifest = toManifest(def);
    const id = toolId(manifest.name, manifest.version);
    const existing = this.#get(manifest.name, manifest.version);
    if (existing)
      throw new ToolDefinitionError(id, [`${id} is already registered (${existing.tool.source})`]);

    const tool: RunnableTool = {
      manifest,
      source: 'local',
      async run(args, ctx) {
        ctx.signal.throwIfAborted();
        const input = await def.input.safeParseAsync(args);
        if (!input.success) {
          throw new ToolInputError(clip(`invalid arguments for ${id}:\n${z.prettifyError(input.error)}`), {
            issues: issuesOf(input.error),
          });
        }
        const guarded = guardContext(ctx);
        try {
          let result: unknown;
          try {
            result = await abortable(
              Promise.resolve().then(() => def.run(input.data, guarded.ctx)),
              ctx.signal,
            );
          } catch (e) {
            throw normalizeThrown(e, ctx.signal);
          }
          ctx.signal.throwIfAborted();
          const output = await def.output.safeParseAsync(result);
          if (!output.success) {
            throw new ToolOutputError(
              clip(`${id} returned output that does not match its schema:\n${z.prettifyError(output.error)}`),
              {
                issues: issuesOf(output.error),
              },
            );
          }
          return output.data;
        } finally {
          guarded.close();
        }
      },
    };
    this.#put(manifest, { tool, key: canonicalJson(manifest), local: true, workers: [] });
    return tool;
  }

  /**
   * A tool announced by a worker. Validates the manifest; refuses (ToolDefinitionError) a clash
   * with an in-process tool or with a different manifest of the same name@version from another
   * worker. The same manifest again (a re-announcement, or another instance) returns the same tool.
   */
  accept(manifestInput: unknown, workerId: string, invoke: RemoteInvoke): RunnableTool {
    const named = manifestInput as { name?: unknown; version?: unknown } | null;
    const label =
      named && typeof named === 'object' && typeof named.name === 'string'
        ? toolId(named.name, String(named.version))
        : '(unnamed)';
    if (!WORKER_ID_PATTERN.test(workerId))
      throw new ToolDefinitionError(label, [`worker id ${JSON.stringify(workerId)} is not valid`]);
    const parsed = ToolManifest.safeParse(manifestInput);
    if (!parsed.success) {
      throw new ToolDefinitionError(
        label,
        parsed.error.issues.map((i) => `${i.path.join('.') || 'manifest'}: ${i.message}`),
      );
    }
    const manifest = parsed.data;
    const id = toolId(manifest.name, manifest.version);
    const problems = sensitiveProblems(manifest.sensitive, manifest.inputSchema, manifest.outputSchema);
    if (manifest.inputSchema['type'] !== 'object') problems.push('input schema must be an object schema');
    if (problems.length > 0) throw new ToolDefinitionError(id, problems);

    const key = canonicalJson(manifest);
    const existing = this.#get(manifest.name, manifest.version);
    if (existing) {
      if (existing.local)
        throw new ToolDefinitionError(id, [
          `${id} is already registered in process; worker ${workerId} may not replace it`,
        ]);
      if (existing.key === key) {
        if (!existing.workers.includes(workerId)) existing.workers.push(workerId);
        return existing.tool;
      }
      const others = existing.workers.filter((w) => w !== workerId);
      if (others.length > 0) {
        throw new ToolDefinitionError(id, [
          `${id} is already announced by worker ${others[0]} with a different manifest; give the new one a new version`,
        ]);
      }
      // The only worker behind it changed its manifest: the new one replaces the old.
    }

    const entry: Entry = {
      tool: undefined as unknown as RunnableTool,
      key,
      local: false,
      workers: [workerId],
    };
    const input = validatorFor(manifest.inputSchema);
    const output = validatorFor(manifest.outputSchema);
    entry.tool = {
      manifest,
      get source(): ToolSource {
        return `worker:${entry.workers[0] ?? workerId}`;
      },
      async run(args, ctx) {
        ctx.signal.throwIfAborted();
        if (input) {
          const checked = input.safeParse(args);
          if (!checked.success) {
            throw new ToolInputError(
              clip(`invalid arguments for ${id}:\n${z.prettifyError(checked.error)}`),
              {
                issues: issuesOf(checked.error),
              },
            );
          }
        }
        const guarded = guardContext(ctx);
        try {
          let result: unknown;
          try {
            result = await abortable(invoke(args, guarded.ctx), ctx.signal);
          } catch (e) {
            throw normalizeThrown(e, ctx.signal);
          }
          if (output) {
            const checked = output.safeParse(result);
            if (!checked.success) {
              throw new ToolOutputError(
                clip(
                  `${id} returned output that does not match its schema:\n${z.prettifyError(checked.error)}`,
                ),
                {
                  issues: issuesOf(checked.error),
                },
              );
            }
          }
          return result;
        } finally {
          guarded.close();
        }
      },
    };
    this.#put(manifest, entry);
    return entry.tool;
  }

  /** The tool name@version, or the newest version (semver order) when `version` is omitted. */
  resolve(name: string, version?: string): RunnableTool | undefined {
    const versions = this.#tools.get(name);
    if (!versions) return undefined;
    if (version !== undefined) return versions.get(version)?.tool;
    let newest: string | undefined;
    for (const v of versions.keys()) if (newest === undefined || compareVersions(v, newest) > 0) newest = v;
    return newest === undefined ? undefined : versions.get(newest)?.tool;
  }

  /** Every manifest, by name then version (oldest first). */
  list(): ToolManifest[] {
    return [...this.#tools.keys()]
      .sort()
      .flatMap((name) =>
        [...this.#tools.get(name)!.entries()]
          .sort(([a], [b]) => compareVersions(a, b))
          .map(([, e]) => e.tool.manifest),
      );
  }

  /**
   * A worker went away: it no longer backs any tool (or any but the name@version ids in
   * `except`). A remote tool that no worker backs any more is removed.
   */
  remove(workerId: string, except: Iterable<string> = [], onlyTool?: string): void {
    const keep = new Set(except);
    for (const [name, versions] of [...this.#tools]) {
      if (onlyTool !== undefined && name !== onlyTool) continue;
      for (const [version, entry] of [...versions]) {
        if (entry.local || keep.has(toolId(name, version))) continue;
        const i = entry.workers.indexOf(workerId);
        if (i < 0) continue;
        entry.workers.splice(i, 1);
        if (entry.workers.length === 0) this.#delete(name, version);
      }
    }
  }

  /** The workers behind a remote tool (empty for an in-process one). */
  workersOf(name: string, version: string): string[] {
    return [...(this.#get(name, version)?.workers ?? [])];
  }
}
