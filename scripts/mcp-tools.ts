/**
 * `npm run mcp-tools`: the MCP tool provider (services/mcp-tools/main.ts) against the stack that
 * `npm start` runs, as its `mcp-tools` identity (granted the namespaces of the configuration
 * file's mcpServers at that start), with its worker secret (both from .toolbus/). Any NATS_URL,
 * NATS_* credential or WORKER_SECRET in the environment is used instead.
 */
import { fileURLToPath } from 'node:url';
import { runAsLocalIdentity } from './localProcess.ts';

runAsLocalIdentity({
  identity: 'mcp-tools',
  entry: fileURLToPath(new URL('../services/mcp-tools/main.ts', import.meta.url)),
  label: 'mcp-tools',
});
