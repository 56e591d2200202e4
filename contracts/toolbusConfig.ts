import { z } from 'zod';

/**
 * The Toolbus configuration file (`toolbus.json` at the checkout root, or the file TOOLBUS_CONFIG
 * names): which tools a Toolbus process loads besides its built-in ones.
 *
 * - `tools`: tool modules, as paths relative to the file. Each module's default export is a tool
 *   definition made with `defineTool`, or an array of them (docs/tools.md, decision 0025).
 * - `mcpServers`: MCP servers whose tools Toolbus offers (the MCP-tools work owns their schema;
 *   here the key is only accepted, as a record of named entries).
 *
 * Unknown keys are refused: a misspelt `tool` would otherwise load nothing, silently.
 */
export const ToolModulePath = z
  .string()
  .min(1, 'must not be empty')
  .max(1024, 'must be at most 1024 characters')
  .refine((p) => !p.includes('\0'), 'must not contain a NUL character');

export const ToolbusConfigFile = z.strictObject({
  tools: z
    .array(ToolModulePath)
    .max(100, 'at most 100 tool modules')
    .refine((paths) => new Set(paths).size === paths.length, 'lists a module twice')
    .default([]),
  mcpServers: z.record(z.string(), z.unknown()).default({}),
});
export type ToolbusConfigFile = z.infer<typeof ToolbusConfigFile>;
