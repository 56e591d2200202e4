/**
 * @toolbus/tools: write a tool (`defineTool`) and serve it to Toolbus from your own process
 * (`serveTools` over NATS, with `connectNats`). The code is the repository's own (lib/tools,
 * lib/nats.ts); this file is the package's public surface, nothing more.
 */
export {
  defineTool,
  toManifest,
  DEFAULT_TIMEOUT_MS,
  type ToolContext,
  type ToolDefinition,
} from '../../../lib/tools/define.ts';
export {
  ToolDefinitionError,
  ToolInputError,
  ToolOutputError,
  ToolRunError,
} from '../../../lib/tools/errors.ts';
export { redact } from '../../../lib/tools/redact.ts';
export { serveTools, type ServeToolsOptions, type ToolServer } from '../../../lib/tools/remote.ts';
export { connectNats, type NatsConnection, type NatsCredentials } from '../../../lib/nats.ts';
export type { ToolManifest } from '../../../contracts/manifest.ts';
