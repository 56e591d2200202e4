import { z } from 'zod';
import { ToolManifest, type Principal } from '../../contracts/index.ts';

/** What the dispatcher's GET /tools answers; each manifest is checked on its own. */
const ToolsReply = z.object({ tools: z.array(z.unknown()) });

export interface CatalogOptions {
  /** The dispatcher's HTTP API (GATEWAY_DISPATCHER_URL). */
  dispatcherUrl: string;
  /** How long a read registry is used (GATEWAY_TOOLS_TTL_MS). */
  ttlMs: number;
  fetch?: typeof fetch;
  now?: () => number;
  /** Told of a manifest that is not one (another version of the contracts): it is left out. */
  onInvalid?: (problem: string) => void;
}

/**
 * The tool registry as the dispatchers have it, read from GET /tools (docs/decisions/0018):
 * kept `ttlMs`, read again at once when a tool is asked for by name and missing, and shared by
 * concurrent reads. Only the newest version of each tool is shown, as the dispatcher runs the
 * newest when no version is named.
 */
export class ToolCatalog {
  #tools: ToolManifest[] = [];
  #readAt = -Infinity;
  #reading: Promise<ToolManifest[]> | null = null;
  readonly #o: CatalogOptions;

  constructor(options: CatalogOptions) {
    this.#o = options;
  }

  /** The tools `principal` may call, by name. */
  async listFor(principal: Principal): Promise<ToolManifest[]> {
    return (await this.#current(false)).filter((m) => mayCall(principal, m));
  }

  /** The tool of this name `principal` may call, or null (unknown, or not theirs to call). */
  async find(principal: Principal, name: string): Promise<ToolManifest | null> {
    const hit = (await this.#current(false)).find((m) => m.name === name);
    const tool = hit ?? (await this.#current(true)).find((m) => m.name === name);
    return tool && mayCall(principal, tool) ? tool : null;
  }

  /** Whether the dispatcher answered lately (readiness). */
  async check(): Promise<void> {
    await this.#current(true);
  }

  async #current(fresh: boolean): Promise<ToolManifest[]> {
    const now = (this.#o.now ?? Date.now)();
    if (!fresh && now - this.#readAt < this.#o.ttlMs) return this.#tools;
    this.#reading ??= this.#read().finally(() => (this.#reading = null));
    return this.#reading;
  }

  async #read(): Promise<ToolManifest[]> {
    const res = await (this.#o.fetch ?? fetch)(new URL('/tools', this.#o.dispatcherUrl), {
      signal: AbortSignal.timeout(5_000),
    });
    if (!res.ok) throw new Error(`the dispatcher answered GET /tools with ${res.status}`);
    const parsed = ToolsReply.safeParse(await res.json());
    if (!parsed.success)
      throw new Error(`the dispatcher's GET /tools is not a tool list: ${parsed.error.message}`);
    const manifests: ToolManifest[] = [];
    for (const item of parsed.data.tools) {
      const m = ToolManifest.safeParse(item);
      if (m.success) manifests.push(m.data);
      else
        this.#o.onInvalid?.(
          `${JSON.stringify((item as { name?: unknown }).name)}: ${m.error.issues[0]?.message}`,
        );
    }
    this.#tools = newestOfEach(manifests);
    this.#readAt = (this.#o.now ?? Date.now)();
    return this.#tools;
  }
}

/** The dispatcher's rule (handling.ts): the caller needs every role the tool names. */
export const mayCall = (principal: Principal, manifest: ToolManifest): boolean =>
  manifest.roles.every((r) => principal.roles.includes(r));

/** GET /tools lists by name, then version oldest first: the last of each name is the newest. */
function newestOfEach(tools: ToolManifest[]): ToolManifest[] {
  const byName = new Map<string, ToolManifest>();
  for (const m of tools) byName.set(m.name, m);
  return [...byName.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}
