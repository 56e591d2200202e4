import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { McpContentResult } from '../../contracts/index.ts';
import { defineTool, type ToolDefinition } from '../../lib/tools/index.ts';

/*
 * The tools the MCP conformance suite (@modelcontextprotocol/conformance, server mode) calls by
 * name, written as ordinary Toolbus tools: served by a tool worker, so every call the suite makes
 * goes through the dispatcher and is recorded in the development principal's stream. Each returns
 * what its scenario checks (the scenario's description in the suite is the specification).
 * Results other than text use the MCP content convention of contracts/mcpContent.ts.
 *
 * Not here, on purpose: test_tool_with_logging, test_sampling and the test_elicitation* tools.
 * They need the server to send the client a log notification or a request in the middle of a call,
 * and a Toolbus tool has no channel to the client (docs/mcp-conformance.md).
 */

/** A 1x1 red PNG. */
const RED_PIXEL_PNG =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC';
/** One millisecond of silence: 8 samples of 8-bit mono PCM at 8 kHz. */
const SILENT_WAV = 'UklGRiwAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQgAAACAgICAgICAgA==';

const NoArgs = z.object({});
const common = {
  version: '1.0.0',
  input: NoArgs,
  timeoutMs: 10_000,
  idempotent: true,
  annotations: { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false },
} as const;

export const simpleText = defineTool({
  ...common,
  name: 'test_simple_text',
  description: 'MCP conformance: returns one text block.',
  output: McpContentResult,
  async run(): Promise<McpContentResult> {
    return { content: [{ type: 'text', text: 'This is a simple text response for testing.' }] };
  },
});

export const imageContent = defineTool({
  ...common,
  name: 'test_image_content',
  description: 'MCP conformance: returns one image block (a 1x1 red PNG).',
  output: McpContentResult,
  async run(): Promise<McpContentResult> {
    return { content: [{ type: 'image', data: RED_PIXEL_PNG, mimeType: 'image/png' }] };
  },
});

export const audioContent = defineTool({
  ...common,
  name: 'test_audio_content',
  description: 'MCP conformance: returns one audio block (a short silent WAV).',
  output: McpContentResult,
  async run(): Promise<McpContentResult> {
    return { content: [{ type: 'audio', data: SILENT_WAV, mimeType: 'audio/wav' }] };
  },
});

export const embeddedResource = defineTool({
  ...common,
  name: 'test_embedded_resource',
  description: 'MCP conformance: returns one embedded text resource.',
  output: McpContentResult,
  async run(): Promise<McpContentResult> {
    return {
      content: [
        {
          type: 'resource',
          resource: {
            uri: 'test://embedded-resource',
            mimeType: 'text/plain',
            text: 'This is an embedded resource content.',
          },
        },
      ],
    };
  },
});

export const multipleContentTypes = defineTool({
  ...common,
  name: 'test_multiple_content_types',
  description: 'MCP conformance: returns a text, an image and an embedded resource block.',
  output: McpContentResult,
  async run(): Promise<McpContentResult> {
    return {
      content: [
        { type: 'text', text: 'Multiple content types test:' },
        { type: 'image', data: RED_PIXEL_PNG, mimeType: 'image/png' },
        {
          type: 'resource',
          resource: {
            uri: 'test://mixed-content-resource',
            mimeType: 'application/json',
            text: JSON.stringify({ test: 'data', value: 123 }),
          },
        },
      ],
    };
  },
});

export const errorHandling = defineTool({
  ...common,
  name: 'test_error_handling',
  description: 'MCP conformance: always fails (recorded as TOOL_ERROR).',
  output: z.object({}),
  async run(): Promise<Record<string, never>> {
    throw new Error('This tool intentionally returns an error for testing');
  },
});

/**
 * The suite wants at least three increasing progress notifications. The dispatcher sends at most
 * one progress update per 100 ms (docs/tools.md), so the steps are 150 ms apart, not the 50 ms the
 * scenario suggests: closer steps would be merged and the client would see two.
 */
const PROGRESS_STEP_MS = 150;

export const toolWithProgress = defineTool({
  ...common,
  name: 'test_tool_with_progress',
  description: 'MCP conformance: reports progress 0, 0.5 and 1, then returns a text block.',
  output: McpContentResult,
  async run(_args, ctx): Promise<McpContentResult> {
    for (const fraction of [0, 0.5, 1]) {
      if (fraction > 0) await sleep(PROGRESS_STEP_MS, undefined, { signal: ctx.signal });
      ctx.progress({ fraction, message: `step ${fraction * 2 + 1} of 3` });
    }
    return { content: [{ type: 'text', text: 'Progress test completed.' }] };
  },
});

/** Registered under an id, so that the JSON Schema refers to it from `$defs` (what SEP-1613 checks). */
const Address = z.object({ street: z.string(), city: z.string() }).meta({ id: 'address' });

/**
 * The suite checks that `$schema`, `$defs` and `additionalProperties: false` reach the client as
 * written (SEP-1613): zod writes all three, the registry and the gateway must keep them.
 */
export const jsonSchema202012 = defineTool({
  ...common,
  name: 'json_schema_2020_12_tool',
  description: 'MCP conformance: an input schema with $schema, $defs and additionalProperties (2020-12).',
  input: z.strictObject({ name: z.string().optional(), address: Address.optional() }),
  output: McpContentResult,
  async run(args): Promise<McpContentResult> {
    return { content: [{ type: 'text', text: JSON.stringify(args) }] };
  },
});

export const conformanceTools: ToolDefinition[] = [
  simpleText,
  imageContent,
  audioContent,
  embeddedResource,
  multipleContentTypes,
  errorHandling,
  toolWithProgress,
  jsonSchema202012,
];

export const CONFORMANCE_TOOL_NAMES = conformanceTools.map((t) => t.name);
