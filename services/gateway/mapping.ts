import type { CallToolResult, Tool } from '@modelcontextprotocol/server';
import { McpContentResult, type TerminalAnswer, type ToolManifest } from '../../contracts/index.ts';

/**
 * How Toolbus's tools and answers look in MCP (docs/mcp.md). Pure: no I/O, so the mapping is
 * tested on its own and the same for every protocol revision the SDK serves.
 */

/** Where a result says which execution it was (`_meta` of a `tools/call` result). */
export const EXECUTION_META_KEY = 'io.toolbus/execution';
/** Where a failed result carries its typed error (`_meta`), beside the text for the model. */
export const ERROR_META_KEY = 'io.toolbus/error';

const isObjectSchema = (s: Record<string, unknown>): boolean => s['type'] === 'object';

/**
 * A manifest as an MCP tool, or null when MCP cannot call it: MCP's arguments are always an
 * object, so a tool whose input is not one is not listed. An output schema is given only when it
 * is an object schema (MCP's `structuredContent` is an object); otherwise the result is text only.
 */
export function toolOf(m: ToolManifest, options: { asTask?: boolean } = {}): Tool | null {
  if (!isObjectSchema(m.inputSchema)) return null;
  const { title, ...hints } = m.annotations ?? {};
  return {
    name: m.name,
    ...(title !== undefined ? { title } : {}),
    description: m.description,
    inputSchema: m.inputSchema as Tool['inputSchema'],
    ...(isObjectSchema(m.outputSchema) ? { outputSchema: m.outputSchema } : {}),
    ...(m.annotations ? { annotations: { ...(title !== undefined ? { title } : {}), ...hints } } : {}),
    // 2025-11-25 tasks: a long-running tool may be called as a task (docs/mcp.md).
    ...(options.asTask ? { execution: { taskSupport: 'optional' as const } } : {}),
    _meta: { 'io.toolbus/version': m.version, 'io.toolbus/timeoutMs': m.timeoutMs },
  };
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * A terminal answer as a `tools/call` result: a completed execution as `structuredContent` (when
 * the tool declares an object output) and as content: the result's own MCP content blocks when it
 * carries them under `content` (contracts/mcpContent.ts: images, audio, resources, and what MCP
 * servers behind the tool provider return), else its JSON as text; a failed one as `isError: true`,
 * its typed code and message in the text (what a model reads) and in `_meta` (what a program reads).
 */
export function resultOf(answer: TerminalAnswer, tool: ToolManifest | null): CallToolResult {
  const execution = {
    executionId: answer.executionId,
    requestId: answer.requestId,
    ...(answer.status === 'completed' ? { cached: answer.cached, durationMs: answer.durationMs } : {}),
  };
  if (answer.status === 'completed') {
    // A tool gone from the registry since (a task read later): its result as text only.
    const structured = tool !== null && isObjectSchema(tool.outputSchema) && isPlainObject(answer.result);
    const blocks = McpContentResult.safeParse(answer.result);
    return {
      content: blocks.success ? blocks.data.content : [{ type: 'text', text: JSON.stringify(answer.result) }],
      ...(structured ? { structuredContent: answer.result } : {}),
      _meta: { [EXECUTION_META_KEY]: execution },
    };
  }
  return {
    isError: true,
    content: [{ type: 'text', text: `${answer.error.code}: ${answer.error.message}` }],
    _meta: { [EXECUTION_META_KEY]: execution, [ERROR_META_KEY]: answer.error },
  };
}
