import { setTimeout as sleep } from 'node:timers/promises';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { serveTools } from '../../lib/tools/index.ts';
import { startTestStack, STACK_WORKER_SECRET, type TestStack } from '../support/stack.ts';
import { CONFORMANCE_TOOL_NAMES, conformanceTools } from './tools.ts';

/** The fixed development principal the gateway's test mode acts as (the suite sends no token). */
export const CONFORMANCE_USER = 'mcp-conformance';

export interface ConformanceStack {
  stack: TestStack;
  /** The gateway's Streamable HTTP endpoint. */
  mcpUrl: string;
}

type Teardown = { teardown(fn: () => Promise<void> | void): void };

/**
 * A Toolbus stack for the conformance suite: dispatcher and MCP gateway as their own processes
 * (the gateway in its test mode, acting as CONFORMANCE_USER for requests without a token), and a
 * tool worker, as the `worker` NATS identity, serving the suite's tools. Resolves once the gateway
 * lists every one of them, so the first scenario does not race the worker's announcement.
 */
export async function startConformanceStack(t: Teardown): Promise<ConformanceStack> {
  const stack = await startTestStack(t, {
    services: ['dispatcher', 'gateway'],
    workerTools: CONFORMANCE_TOOL_NAMES,
    env: { GATEWAY_TEST_PRINCIPAL: CONFORMANCE_USER, GATEWAY_TEST_PRINCIPAL_ROLES: 'user' },
  });
  const nc = await stack.connectAs('worker');
  const worker = await serveTools(nc, conformanceTools, {
    workerId: 'mcp-conformance',
    secret: STACK_WORKER_SECRET,
  });
  t.teardown(() => worker.stop());
  const mcpUrl = new URL('/mcp', stack.url('gateway')).href;
  try {
    await waitUntilListed(mcpUrl, CONFORMANCE_TOOL_NAMES);
  } catch (e) {
    const tail = stack.logText('gateway').split('\n').slice(-20).join('\n');
    throw new Error(`the gateway at ${mcpUrl} is not ready: ${(e as Error).message}\ngateway log:\n${tail}`, {
      cause: e,
    });
  }
  return { stack, mcpUrl };
}

/** Polls `tools/list` (as a real MCP client, without a token) until every name is listed. */
async function waitUntilListed(mcpUrl: string, names: readonly string[]): Promise<void> {
  let missing: string[] = [...names];
  for (let attempt = 0; attempt < 600; attempt++) {
    const client = new Client({ name: 'toolbus-conformance-setup', version: '1.0.0' });
    try {
      await client.connect(new StreamableHTTPClientTransport(new URL(mcpUrl)));
      const { tools } = await client.listTools();
      const listed = new Set(tools.map((tool) => tool.name));
      missing = names.filter((n) => !listed.has(n));
      if (missing.length === 0) return;
    } finally {
      await client.close();
    }
    await sleep(100);
  }
  throw new Error(`the gateway never listed ${missing.join(', ')}`);
}
