/**
 * A small MCP client (the official SDK's) for the gateway: `npx tsx scripts/mcp.ts list` or
 * `npx tsx scripts/mcp.ts call <tool> '<json arguments>' [idempotency key]`, with the user's token
 * in TOOLBUS_TOKEN and the gateway at MCP_URL (default http://127.0.0.1:8084/mcp). Prints the
 * JSON of the answer; progress goes to stderr. A call is waited for as long as it runs (or waits
 * for an approver): giving up on it would cancel it (MCP_TIMEOUT_MS, default a day; Ctrl-C
 * cancels it too).
 */
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';

const [command, tool, args, key] = process.argv.slice(2);
const token = process.env['TOOLBUS_TOKEN'];
if (!token || (command !== 'list' && !(command === 'call' && tool))) {
  console.error(
    "usage: TOOLBUS_TOKEN=<jwt> npx tsx scripts/mcp.ts list | call <tool> '<json arguments>' [key]",
  );
  process.exit(2);
}
let parsed: unknown = {};
try {
  if (args) parsed = JSON.parse(args);
} catch (e) {
  console.error(`the arguments are not JSON: ${(e as Error).message}`);
  process.exit(2);
}
if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
  console.error('the arguments must be a JSON object, as in \'{"text":"hi"}\'');
  process.exit(2);
}
const timeoutMs = Number(process.env['MCP_TIMEOUT_MS'] ?? 86_400_000);
if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 2_147_483_647) {
  console.error('MCP_TIMEOUT_MS must be a whole number of milliseconds, at most 2147483647');
  process.exit(2);
}
const client = new Client({ name: 'toolbus-mcp-script', version: '1.0.0' });
try {
  await client.connect(
    new StreamableHTTPClientTransport(new URL(process.env['MCP_URL'] ?? 'http://127.0.0.1:8084/mcp'), {
      requestInit: { headers: { authorization: `Bearer ${token}` } },
    }),
  );
  const answer =
    command === 'list'
      ? await client.listTools()
      : await client.callTool(
          {
            name: tool!,
            arguments: parsed as Record<string, unknown>,
            ...(key ? { _meta: { 'io.toolbus/idempotencyKey': key } } : {}),
          },
          {
            onprogress: (p) => console.error(`progress ${p.progress}/${p.total ?? '?'} ${p.message ?? ''}`),
            // The SDK's default (60 s) would give up on a longer call, and the gateway cancel it.
            timeout: timeoutMs,
          },
        );
  console.log(JSON.stringify(answer, null, 2));
  // A failed call (the tool's error, a refusal the gateway answers as a result) exits 1, as a
  // refusal of the call itself does: a script can tell.
  if ('isError' in answer && answer.isError === true) process.exitCode = 1;
} catch (e) {
  // The gateway's refusal (a bad token, an unknown tool, bad arguments), or a lost connection, as
  // one line, not a stack.
  console.error(`error: ${(e as Error).message}`);
  process.exitCode = 1;
} finally {
  await client.close();
}
