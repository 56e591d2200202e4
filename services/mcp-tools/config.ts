/**
 * Where the provider finds its servers: the `mcpServers` key of the Toolbus configuration file,
 * found and read by lib/toolbusConfig.ts (TOOLBUS_CONFIG, else the checkout's `toolbus.json`),
 * which accepts the key as an opaque record. Its entries are checked here against
 * contracts/mcpServers.ts.
 */
import { McpHttpServer, McpServers, McpStdioServer, ToolNamespace } from '../../contracts/index.ts';
import { readToolbusConfig, toolbusConfigFile, ToolbusConfigError } from '../../lib/toolbusConfig.ts';

/**
 * The `mcpServers` value of configuration file `file`, checked entry by entry so that a problem
 * is reported against the kind of server the entry meant (a union's "no member matched" helps
 * nobody). Throws ToolbusConfigError listing every problem, each naming its place.
 */
export function parseMcpServers(file: string, servers: unknown): McpServers {
  if (servers === undefined) return {};
  if (servers === null || typeof servers !== 'object' || Array.isArray(servers))
    throw new ToolbusConfigError(file, ['mcpServers must be an object: server name -> server']);
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
  if (problems.length > 0) throw new ToolbusConfigError(file, problems);
  return all.data!;
}

/** The configured servers and the file they came from (none: no configuration file). */
export async function loadMcpServers(
  env: Record<string, string | undefined> = process.env,
): Promise<{ file: string | undefined; servers: McpServers }> {
  const file = toolbusConfigFile(env);
  if (file === undefined) return { file, servers: {} };
  return { file, servers: parseMcpServers(file, (await readToolbusConfig(file)).mcpServers) };
}

/**
 * The namespaces of the configured servers, for the provider's NATS authorization (`npm start`).
 * A file that is not valid authorizes nothing here; the provider itself reports why.
 */
export async function configuredMcpNamespaces(
  env: Record<string, string | undefined> = process.env,
): Promise<string[]> {
  try {
    return Object.keys((await loadMcpServers(env)).servers);
  } catch {
    return [];
  }
}
