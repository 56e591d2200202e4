import { z } from 'zod';

/**
 * The Toolbus configuration file (`toolbus.json` at the checkout root, or the file TOOLBUS_CONFIG
 * names): which tools a Toolbus process loads besides its built-in ones.
 *
 * - `tools`: tool modules, as paths relative to the file. Each module's default export is a tool
 *   definition made with `defineTool`, or an array of them (docs/tools.md, decision 0025).
 * - `workerTools`: tool modules, as `tools`, served only by `npm run worker`: the dispatcher does
 *   not load them (a tool runs in one place), and `npm start`'s set-up authorizes its `worker`
 *   identity for them as for `tools`.
 * - `mcpServers`: MCP servers whose tools Toolbus offers (`npm run mcp-tools`). Their schema is
 *   `McpServers` (contracts/mcpServers.ts); the provider checks it entry by entry so that every
 *   problem is named with its server (services/mcp-tools/config.ts). Here the key is a record.
 *
 * Unknown keys are refused: a misspelt `tool` would otherwise load nothing, silently.
 */
export const ToolModulePath = z
  .string()
  .min(1, 'must not be empty')
  .max(1024, 'must be at most 1024 characters')
  .refine((p) => !p.includes('\0'), 'must not contain a NUL character');

const ToolModules = z
  .array(ToolModulePath)
  .max(100, 'at most 100 tool modules')
  .refine((paths) => new Set(paths).size === paths.length, 'lists a module twice')
  .default([]);

export const ToolbusConfigFile = z.strictObject({
  tools: ToolModules,
  workerTools: ToolModules,
  mcpServers: z.record(z.string(), z.unknown()).default({}),
});
export type ToolbusConfigFile = z.infer<typeof ToolbusConfigFile>;
