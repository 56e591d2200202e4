/**
 * One JSON-RPC message POSTed to an MCP endpoint as a Streamable HTTP client sends it (the
 * headers the transport requires, protocol 2025-11-25), without an SDK: for tests that look at
 * the HTTP answer itself (status, headers, a refusal before the SDK).
 */
export const postMcp = (url: string, body: string, headers: Record<string, string> = {}): Promise<Response> =>
  fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-protocol-version': '2025-11-25',
      ...headers,
    },
    body,
  });
