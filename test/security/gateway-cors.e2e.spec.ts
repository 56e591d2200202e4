import t from 'tap';
import { postMcp } from '../support/mcp.ts';
import { startTestStack } from '../support/stack.ts';

/**
 * A browser-based MCP client on an allowed origin (GATEWAY_ALLOWED_ORIGINS, localhost by default)
 * can use the gateway: its preflight is answered without a token, and every answer (the SDK's, a
 * 401 challenge) names the origin, so that the browser shows it to the page. A foreign origin
 * still gets 403 and no CORS header; a request without Origin (not from a page) gets none either.
 */
t.test('CORS for browser-based MCP clients on an allowed origin', async (t) => {
  const ts = await startTestStack(t, { services: ['dispatcher', 'gateway'] });
  const mcp = `${ts.url('gateway')}/mcp`;
  const token = await ts.token('ann');
  const page = 'http://localhost:6274';
  const preflight = (origin: string) =>
    fetch(mcp, {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization,content-type,mcp-protocol-version',
      },
    });
  const ping = (headers: Record<string, string>) =>
    postMcp(mcp, JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }), headers);

  const pre = await preflight(page);
  t.equal(pre.status, 204, 'the preflight is answered without a token');
  t.equal(pre.headers.get('access-control-allow-origin'), page);
  t.match(pre.headers.get('access-control-allow-methods'), /POST/);
  for (const h of ['authorization', 'content-type', 'mcp-protocol-version']) {
    t.match(pre.headers.get('access-control-allow-headers'), h, `${h} may be sent`);
  }

  const ok = await ping({ origin: page, authorization: `Bearer ${token}` });
  t.equal(ok.status, 200, 'the call itself');
  t.equal(ok.headers.get('access-control-allow-origin'), page, "the SDK's answer names the origin");
  t.match(await ok.text(), /"result":\{\}/);

  const challenged = await ping({ origin: page });
  t.equal(challenged.status, 401);
  t.equal(challenged.headers.get('access-control-allow-origin'), page, 'so does the 401');
  t.match(challenged.headers.get('access-control-expose-headers'), /www-authenticate/);

  const foreign = await preflight('http://evil.example');
  t.equal(foreign.status, 403, 'a foreign origin is refused as before');
  t.equal(foreign.headers.get('access-control-allow-origin'), null);

  const plain = await ping({ authorization: `Bearer ${token}` });
  t.equal(plain.status, 200);
  t.equal(plain.headers.get('access-control-allow-origin'), null, 'no Origin, no CORS header');

  const metadata = await fetch(`${ts.url('gateway')}/.well-known/oauth-protected-resource/mcp`, {
    headers: { origin: 'http://anywhere.example' },
  });
  t.equal(metadata.status, 200);
  t.equal(metadata.headers.get('access-control-allow-origin'), '*', 'the metadata is public');
});
