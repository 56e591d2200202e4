import { z } from 'zod';

/*
 * MCP content blocks a tool may return for the MCP gateway to show as they are.
 *
 * A Toolbus tool returns one JSON value, checked by its output schema and stored in `ToolCompleted`.
 * MCP also knows images, audio and embedded resources. The convention (docs/mcp-conformance.md):
 * when a tool's result is an object whose `content` field is an array of these blocks, the gateway
 * answers `tools/call` with `content` set to that array (and `structuredContent` set to the whole
 * result, as for any tool with an output schema). Any other result is shown as its JSON text.
 *
 * The shapes are those of the MCP specification (2025-06-18 and 2025-11-25), narrowed to what a
 * tool needs; `McpContentResult.safeParse` tells the gateway whether the convention applies.
 */

const Base64 = z.base64().max(1024 * 1024);
const MimeType = z.string().min(1).max(255);

export const McpTextContent = z.strictObject({ type: z.literal('text'), text: z.string() });

export const McpImageContent = z.strictObject({
  type: z.literal('image'),
  data: Base64,
  mimeType: MimeType,
});

export const McpAudioContent = z.strictObject({
  type: z.literal('audio'),
  data: Base64,
  mimeType: MimeType,
});

/** An embedded resource: its URI, MIME type, and either `text` or base64 `blob`. */
export const McpEmbeddedResource = z.strictObject({
  type: z.literal('resource'),
  resource: z.union([
    z.strictObject({ uri: z.string().min(1), mimeType: MimeType, text: z.string() }),
    z.strictObject({ uri: z.string().min(1), mimeType: MimeType, blob: Base64 }),
  ]),
});

export const McpContentBlock = z.discriminatedUnion('type', [
  McpTextContent,
  McpImageContent,
  McpAudioContent,
  McpEmbeddedResource,
]);
export type McpContentBlock = z.infer<typeof McpContentBlock>;

/** A tool result that follows the convention: at least one block under `content`. */
export const McpContentResult = z.object({ content: z.array(McpContentBlock).min(1).max(100) });
export type McpContentResult = z.infer<typeof McpContentResult>;
