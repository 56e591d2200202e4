/**
 * @toolbus/client: an agent asks Toolbus to run tools for a user, over NATS (`connectNats`, then
 * `createAgentClient(nc).execute(tool, args, { token })`), and cancels them. The code is the
 * repository's own (lib/clients/agent.ts, lib/nats.ts); this file is the package's public surface.
 */
export {
  AgentClientError,
  cancelExecution,
  createAgentClient,
  looksLikeExecutionId,
  userIdOfToken,
  type AgentClient,
  type CancelOptions,
  type ExecuteOptions,
  type InterimAnswer,
  type TerminalAnswer,
} from '../../../lib/clients/agent.ts';
export { CancelRequest, CancelResult } from '../../../contracts/services.ts';
export type { AgentAnswer } from '../../../contracts/request.ts';
export { connectNats, type NatsConnection, type NatsCredentials } from '../../../lib/nats.ts';
