import fastifyWebsocket from '@fastify/websocket';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import WebSocket from 'ws';
import { createHttpApp } from './http.ts';

/**
 * Connections to an app built by createHttpApp, over real sockets: one that never begins a request
 * is closed after the first-request timeout; requests, kept-alive connections and WebSockets that
 * go quiet after their first request are not.
 */
const FIRST_REQUEST_MS = 300;
/** How long a test waits for something that should happen after FIRST_REQUEST_MS: generous. */
const PATIENCE_MS = 30_000;

const app = createHttpApp({ service: 'test', logLevel: 'silent', firstRequestTimeoutMs: FIRST_REQUEST_MS });
await app.register(fastifyWebsocket);
app.get('/slow', async () => {
  await sleep(FIRST_REQUEST_MS * 4);
  return { slow: true };
});
app.get('/port', async (req) => ({ port: req.raw.socket.remotePort }));
app.get('/echo', { websocket: true }, (socket) => {
  socket.on('message', (data: Buffer) => socket.send(data.toString()));
});
await app.listen({ host: '127.0.0.1', port: 0 });
t.teardown(() => app.close());
const { port } = app.server.address() as AddressInfo;

/** Rejects after PATIENCE_MS unless `promise` settled first. */
async function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${PATIENCE_MS} ms`)), PATIENCE_MS);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

t.test('a connection that never sends a byte is closed by the server', async (t) => {
  const socket = net.connect(port, '127.0.0.1');
  t.teardown(() => socket.destroy());
  await once(socket, 'connect');
  let received = 0;
  socket.on('data', (chunk: Buffer) => (received += chunk.length));
  socket.on('error', () => {});
  await within(once(socket, 'close'), 'the silent socket was not closed');
  t.equal(received, 0, 'closed without an answer');
});

t.test('a request answered after longer than the first-request timeout gets its answer', async (t) => {
  const res = await within(fetch(`http://127.0.0.1:${port}/slow`), 'GET /slow');
  t.equal(res.status, 200);
  t.strictSame(await res.json(), { slow: true });
});

t.test(
  'a kept-alive connection stays usable after a pause longer than the first-request timeout',
  async (t) => {
    t.ok(app.server.keepAliveTimeout > FIRST_REQUEST_MS * 4, 'the pause is within keepAliveTimeout');
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    t.teardown(() => agent.destroy());
    const get = () =>
      within(
        new Promise<number>((resolve, reject) => {
          http
            .get({ host: '127.0.0.1', port, path: '/port', agent }, (res) => {
              let body = '';
              res.on('data', (c: Buffer) => (body += c.toString()));
              res.on('end', () => resolve((JSON.parse(body) as { port: number }).port));
            })
            .on('error', reject);
        }),
        'GET /port',
      );
    const first = await get();
    await sleep(FIRST_REQUEST_MS * 3);
    const second = await get();
    t.equal(second, first, 'the second request came over the same connection');
  },
);

t.test('a WebSocket stays open while idle past the first-request timeout', async (t) => {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/echo`);
  let closed = false;
  ws.on('close', () => (closed = true));
  await within(once(ws, 'open'), 'the WebSocket did not open');
  await sleep(FIRST_REQUEST_MS * 4);
  t.notOk(closed, 'still open after the idle pause');
  ws.send('still there');
  const [reply] = (await within(once(ws, 'message'), 'no echo')) as [Buffer];
  t.equal(reply.toString(), 'still there', 'and it still carries messages');
  ws.close();
  await within(once(ws, 'close'), 'the WebSocket did not close');
});

t.test('past its connection cap a service closes new connections and serves the ones it holds', async (t) => {
  const capped = createHttpApp({ service: 'capped', logLevel: 'silent', maxConnections: 3 });
  capped.get('/ok', async () => ({ ok: true }));
  await capped.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(() => capped.close());
  const cappedPort = (capped.server.address() as AddressInfo).port;
  const open = async () => {
    const socket = net.connect(cappedPort, '127.0.0.1');
    socket.on('error', () => {});
    t.teardown(() => socket.destroy());
    await within(once(socket, 'connect'), 'connect');
    return socket;
  };
  // Three silent sockets take the cap (a local process holding what it opens).
  const held = [await open(), await open(), await open()];
  const extra = await open();
  await within(once(extra, 'close'), 'the connection past the cap was not closed');
  t.pass('the fourth connection is closed at once');
  // A held connection still gets its answers.
  held[0]!.write('GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  let answer = '';
  held[0]!.on('data', (c: Buffer) => (answer += c.toString()));
  await within(once(held[0]!, 'close'), 'no answer on a held connection');
  t.match(answer, /^HTTP\/1\.1 200/, 'a held connection is served');
  // Once the holder lets go, others get in again.
  held[1]!.destroy();
  held[2]!.destroy();
  const res = await within(
    (async () => {
      for (;;) {
        const r = await fetch(`http://127.0.0.1:${cappedPort}/ok`).catch(() => null);
        if (r) return r;
        await sleep(50);
      }
    })(),
    'GET /ok after the holder let go',
  );
  t.equal(res.status, 200, 'served again once below the cap');
});

t.test('every refusal, Fastify’s own included, has one shape: {error: {code, message}}', async (t) => {
  const api = createHttpApp({ service: 'test', logLevel: 'silent', bodyLimit: 100 });
  api.post('/things', async (req) => ({ got: req.body }));
  api.get('/broken', async () => {
    throw new Error('secret detail of the failure');
  });
  await api.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(() => api.close());
  const base = `http://127.0.0.1:${(api.server.address() as AddressInfo).port}`;
  const json = { 'content-type': 'application/json' };
  const cases: Array<[string, RequestInit & { path: string }, number, string]> = [
    ['an unknown route', { path: '/nowhere?token=x' }, 404, 'NOT_FOUND'],
    [
      'a body that is not JSON',
      { path: '/things', method: 'POST', headers: json, body: '{"a":' },
      400,
      'BAD_REQUEST',
    ],
    [
      'a body over the limit',
      { path: '/things', method: 'POST', headers: json, body: JSON.stringify({ a: 'x'.repeat(200) }) },
      413,
      'PAYLOAD_TOO_LARGE',
    ],
    [
      'an unknown content type',
      { path: '/things', method: 'POST', headers: { 'content-type': 'text/x-unknown' }, body: 'hi' },
      415,
      'UNSUPPORTED_MEDIA_TYPE',
    ],
    [
      'JSON sent as text/plain',
      { path: '/things', method: 'POST', headers: { 'content-type': 'text/plain' }, body: '{"a":1}' },
      415,
      'UNSUPPORTED_MEDIA_TYPE',
    ],
    [
      'a __proto__ key',
      { path: '/things', method: 'POST', headers: json, body: '{"a":{"__proto__":{"x":1}}}' },
      400,
      'BAD_REQUEST',
    ],
    ['a route that fails', { path: '/broken' }, 500, 'INTERNAL'],
  ];
  for (const [what, { path, ...init }, status, code] of cases) {
    const res = await fetch(base + path, init);
    const body = (await res.json()) as { error?: { code?: unknown; message?: unknown } };
    t.equal(res.status, status, `${what}: ${status}`);
    t.equal(body.error?.code, code, `${what}: ${code}`);
    t.type(body.error?.message, 'string', `${what}: a message`);
  }
  const proto = (await (
    await fetch(`${base}/things`, { method: 'POST', headers: json, body: '{"a":{"__proto__":{"x":1}}}' })
  ).json()) as { error: { message: string } };
  t.match(
    proto.error.message,
    /key "__proto__".*not allowed/,
    'a forbidden key is named, not called "not JSON"',
  );
  const syntax = (await (
    await fetch(`${base}/things`, { method: 'POST', headers: json, body: '{"a":' })
  ).json()) as { error: { message: string } };
  t.match(
    syntax.error.message,
    /^the body is not JSON \(/,
    'bad JSON is said to be, with the parser’s words',
  );
  const broken = await (await fetch(`${base}/broken`)).text();
  t.notMatch(broken, /secret detail/, 'a failure’s details stay in the log');
  const unknown = (await (await fetch(`${base}/nowhere?token=x`)).json()) as { error: { message: string } };
  t.equal(unknown.error.message, 'no route GET /nowhere', 'the query string is not echoed');
});

t.test('a request Node cannot parse (a line break in a header) is answered in the same shape', async (t) => {
  const api = createHttpApp({ service: 'test', logLevel: 'silent' });
  api.get('/hello', async () => ({ hello: true }));
  await api.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(() => api.close());
  const port = (api.server.address() as AddressInfo).port;
  // As `-H "authorization: Bearer $T"` sends it when T holds npm's banner above the token.
  const socket = net.connect(port, '127.0.0.1');
  let received = '';
  socket.on('data', (d: Buffer) => (received += d.toString()));
  socket.write('GET /hello HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \x01> toolbus@1 token\r\n\r\n');
  await once(socket, 'close');
  t.match(received, /^HTTP\/1\.1 400 Bad Request\r\n/);
  const body = JSON.parse(received.slice(received.indexOf('\r\n\r\n') + 4)) as {
    error: { code: string; message: string };
  };
  t.equal(body.error.code, 'BAD_REQUEST');
  t.match(body.error.message, /could not be read.*npm run -s/);
});
