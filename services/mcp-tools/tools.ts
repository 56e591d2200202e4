/**
 * An MCP server's tools as Toolbus tool definitions: the server's JSON Schemas turned into zod
 * (zod 4's `z.fromJSONSchema`, the converter the registry already uses for workers' manifests),
 * roles, timeouts and the idempotent / destructive settings from the configuration, never from
 * the server's own annotations (docs/decisions/0020-mcp-tool-provider.md).
 */
import { z } from 'zod';
import { McpToolName, type McpToolbusBlock } from '../../contracts/index.ts';
import {
  toManifest,
  ToolDefinitionError,
  type ToolContext,
  type ToolDefinition,
} from '../../lib/tools/index.ts';

/** A tool as `tools/list` gives it (the fields used here). */
export interface McpTool {
  name: string;
  title?: string | undefined;
  description?: string | undefined;
  inputSchema: Record<string, unknown>;
  outputSchema?: Record<string, unknown> | undefined;
  annotations?: { title?: string | undefined } | undefined;
}

/**
 * What a call of a tool without an output schema returns: the text of its text blocks joined
 * with newlines, and every content block as the server sent it (images, resource links...).
 */
export const McpContentResult = z.object({
  text: z.string(),
  content: z.array(z.looseObject({ type: z.string() })),
});
export type McpContentResult = z.infer<typeof McpContentResult>;

/** How a definition reaches its server: the server's tool name, checked arguments, the Toolbus context. */
export type McpCall = (
  tool: string,
  args: Record<string, unknown>,
  ctx: ToolContext,
  opts: { idempotent: boolean; structured: boolean },
) => Promise<unknown>;

export interface ServerTools {
  definitions: ToolDefinition[];
  /** One line per tool that cannot be served, naming the server and the tool. */
  refused: string[];
}

const clipText = (s: string, max: number) => (s.length <= max ? s : `${s.slice(0, max - 1)}…`);

function schemaOf(server: string, tool: string, which: 'input' | 'output', doc: unknown): z.ZodType {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc))
    throw new Error(`its ${which} schema is not a JSON Schema object`);
  try {
    return z.fromJSONSchema(doc as Parameters<typeof z.fromJSONSchema>[0]);
  } catch (e) {
    throw new Error(`its ${which} schema cannot be used: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The definitions of a server's tools, under its namespace. A tool whose name cannot be a Toolbus
 * name part, whose schema is not usable JSON Schema, or whose manifest is refused is left out
 * with a reason; the others are served.
 */
export function toolDefinitions(
  server: string,
  settings: McpToolbusBlock,
  tools: readonly McpTool[],
  call: McpCall,
): ServerTools {
  const definitions: ToolDefinition[] = [];
  const refused: string[] = [];
  const seen = new Set<string>();
  for (const tool of tools) {
    const label = `MCP server "${server}" tool ${JSON.stringify(String(tool?.name).slice(0, 80))}`;
    try {
      if (!McpToolName.safeParse(tool.name).success)
        throw new Error('its name must match [A-Za-z0-9_-]{1,64} to be served (one NATS subject token)');
      if (seen.has(tool.name)) throw new Error('the server lists it twice');
      seen.add(tool.name);
      const own = settings.tools[tool.name] ?? {};
      const input = schemaOf(server, tool.name, 'input', tool.inputSchema);
      const structured = tool.outputSchema !== undefined;
      const output = structured ? schemaOf(server, tool.name, 'output', tool.outputSchema) : McpContentResult;
      const idempotent = own.idempotent ?? false;
      const title = tool.title ?? tool.annotations?.title;
      const description =
        tool.description?.trim() || title?.trim() || `The tool ${tool.name} of the MCP server ${server}.`;
      const definition: ToolDefinition = {
        name: `${server}.${tool.name}`,
        version: settings.version,
        description: clipText(description, 1000),
        input,
        output,
        roles: own.roles ?? settings.roles,
        timeoutMs: own.timeoutMs ?? settings.timeoutMs,
        idempotent,
        annotations: {
          ...(title ? { title: clipText(title, 100) } : {}),
          destructiveHint: own.destructive ?? true,
          idempotentHint: idempotent,
        },
        run: (args, ctx) => call(tool.name, args as Record<string, unknown>, ctx, { idempotent, structured }),
      };
      toManifest(definition);
      definitions.push(definition);
    } catch (e) {
      const why = e instanceof ToolDefinitionError ? e.problems.join('; ') : (e as Error).message;
      refused.push(`${label} is not served: ${why}`);
    }
  }
  return { definitions, refused };
}

/** A `tools/call` result's content blocks in the documented shape (`McpContentResult`). */
export function contentResult(content: readonly unknown[]): McpContentResult {
  const blocks = content.filter(
    (b): b is { type: string } & Record<string, unknown> =>
      b !== null && typeof b === 'object' && typeof (b as { type?: unknown }).type === 'string',
  );
  const text = blocks
    .filter((b) => b.type === 'text' && typeof b['text'] === 'string')
    .map((b) => b['text'] as string)
    .join('\n');
  return { text, content: blocks };
}
