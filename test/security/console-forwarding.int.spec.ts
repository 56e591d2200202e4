import { createServer, request } from 'node:http';
import t from 'tap';
import { loadConfig } from '../../lib/config.ts';
import { startConsole } from '../../services/console/app.ts';
import { ConsoleEnv } from '../../services/console/config.ts';

/**
 * The console forwards only its fixed list of calls (services/console/forward.ts). A page (or a
 * script holding someone's token) must not reach any other path of the services through a route
 * parameter: `..`, encoded slashes, or a query smuggled in. The upstream here is a plain HTTP
 * server that records the path each forwarded call arrived at: what the console really asked for.
 */
t.test('the console forwards nothing outside its list', async (t) => {
  const seen: string[] = [];
  const upstream = createServer((req, res) => {
    seen.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => upstream.close(() => resolve())));
  const address = upstream.address();
  const base = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  const consoleApp = await startConsole(
    loadConfig(ConsoleEnv, {
      NODE_ENV: 'test',
      LOG_LEVEL: 'silent',
      CONSOLE_PORT: '0',
      CONSOLE_PROJECTOR_URL: base,
      CONSOLE_DISPATCHER_URL: base,
      CONSOLE_AUDITOR_URL: base,
    }),
  );
  t.teardown(() => consoleApp.close());

  const attempts: Array<[method: 'GET' | 'POST', path: string]> = [
    ['GET', '/api/executions/..%2Fmetrics/events'],
    ['GET', '/api/executions/..%2F..%2Fmetrics/events'],
    ['GET', '/api/executions/%2E%2E%2Fmetrics/events'],
    ['GET', '/api/executions/x%3Fa%3Db/events'],
    ['GET', '/api/executions/..'],
    ['GET', '/api/executions/%2E%2E'],
    ['GET', '/api/executions/./events'],
    ['GET', '/api/users/../activity'],
    ['GET', '/api/users/%2E%2E/activity'],
    ['GET', '/api/audit/users/%2e%2e/verify'],
    ['POST', '/api/executions/%2E%2E/cancel'],
    ['POST', '/api/executions/..%2F..%2Fexecutions/approve'],
  ];
  for (const [method, path] of attempts) {
    seen.length = 0;
    const status = await sendAsIs(consoleApp.url, method, path);
    const reached = seen.map((p) => p.split('?')[0]!);
    const listed = reached.every((p) =>
      /^\/(executions\/[^/]+(\/(cancel|approve|deny))?|users\/[^/]+\/activity|audit\/users\/[^/]+\/verify)$/.test(
        p,
      ),
    );
    t.ok(
      listed && reached.every((p) => !/\/\.\.?(\/|$)/.test(p)),
      `${method} ${path} reached ${JSON.stringify(seen)} (status ${status})`,
    );
    t.notOk(
      seen.some((p) => p.includes('?')),
      `${method} ${path}: no query smuggled in a parameter`,
    );
  }

  t.test('a listed call still goes to its path', async (t) => {
    seen.length = 0;
    const res = await fetch(`${consoleApp.url}/api/executions/abc-1/events`, {
      headers: { authorization: 'Bearer x' },
    });
    t.equal(res.status, 200);
    t.same(seen, ['/executions/abc-1']);
  });
});

/** A request whose path is sent byte for byte (fetch would resolve `..` before sending). */
function sendAsIs(base: string, method: string, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}/`, {
      method,
      path,
      headers: { authorization: 'Bearer x', 'content-type': 'application/json' },
    });
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(method === 'POST' ? '{}' : undefined);
  });
}
