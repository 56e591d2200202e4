/**
 * Where the provider finds its servers: the `mcpServers` key of the Toolbus configuration file
 * (`TOOLBUS_CONFIG`, default `toolbus.json` in the working directory). Other keys of the file
 * belong to other parts of Toolbus and are neither read nor judged here.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { McpHttpServer, McpServers, McpStdioServer, ToolNamespace } from '../../contracts/index.ts';

export const DEFAULT_CONFIG_FILE = 'toolbus.json';

export class McpConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`${file}: the mcpServers configuration is not valid:\n  - ${problems.join('\n  - ')}`);
    this.name = 'McpConfigError';
  }
}

/** The file's `mcpServers`, checked; `{}` when the file has none. Throws McpConfigError naming each problem. */
export function parseMcpServers(file: string, text: string): McpServers {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new McpConfigError(file, [`not JSON: ${(e as Error).message}`]);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw new McpConfigError(file, ['the file must hold a JSON object']);
  const servers = (value as { mcpServers?: unknown }).mcpServers;
  if (servers === undefined) return {};
  if (servers === null || typeof servers !== 'object' || Array.isArray(servers))
    throw new McpConfigError(file, ['mcpServers must be an object: server name -> server']);
  // Each entry on its own, by its kind, so that a problem is reported against the schema the entry
  // meant (a union's "no member matched" helps nobody).
  const problems: string[] = [];
  const out: Record<string, unknown> = {};
  for (const [name, entry] of Object.entries(servers as Record<string, unknown>)) {
    const at = `mcpServers.${JSON.stringify(name)}`;
    if (!ToolNamespace.safeParse(name).success) {
      problems.push(`${at}: a server's name is its tools' namespace and must match [a-z][a-z0-9_-]{0,31}`);
      continue;
    }
    const kind =
      entry && typeof entry === 'object' && 'command' in entry
        ? McpStdioServer
        : entry && typeof entry === 'object' && 'url' in entry
          ? McpHttpServer
          : undefined;
    if (!kind) {
      problems.push(`${at}: needs a "command" (a stdio server) or a "url" (a Streamable HTTP server)`);
      continue;
    }
    const parsed = kind.safeParse(entry);
    if (parsed.success) out[name] = parsed.data;
    else
      problems.push(
        ...parsed.error.issues.map((i) => `${[at, ...i.path.map(String)].join('.')}: ${i.message}`),
      );
  }
  const all = McpServers.safeParse(out);
  if (!all.success) problems.push(...all.error.issues.map((i) => `mcpServers: ${i.message}`));
  if (problems.length > 0) throw new McpConfigError(file, problems);
  return all.data!;
}

export async function loadMcpServers(
  path: string = process.env['TOOLBUS_CONFIG'] ?? DEFAULT_CONFIG_FILE,
): Promise<{
  file: string;
  servers: McpServers;
}> {
  const file = resolve(path);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new McpConfigError(file, [`cannot be read: ${(e as Error).message}`]);
  }
  return { file, servers: parseMcpServers(file, text) };
}

/**
 * The namespaces of the configured servers, for the provider's NATS authorization (`npm start`):
 * none when there is no configuration file; a file that is not valid is reported by the provider
 * itself, and authorizes nothing here.
 */
export async function configuredMcpNamespaces(
  path: string = process.env['TOOLBUS_CONFIG'] ?? DEFAULT_CONFIG_FILE,
): Promise<string[]> {
  try {
    return Object.keys((await loadMcpServers(path)).servers);
  } catch {
    return [];
  }
}
