import { createServer, connect, type Socket } from 'node:net';
import t from 'tap';
import { pollUntil, startNats, startSecuredNats } from '../test/support/processes.ts';
import { startProxy } from '../test/support/proxy.ts';
import { connectNats } from './nats.ts';

t.test('a first connection that gets no answer is tried again; a refused one fails at once', async (t) => {
  const nats = await startNats(t);
  const natsPort = Number(new URL(nats.url).port);
  // In front of the server: the first connection is accepted and never answered (a server too
  // busy to speak), the next ones are passed through.
  const sockets = new Set<Socket>();
  let accepted = 0;
  const front = createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client)).on('error', () => undefined);
    if (++accepted === 1) return void client.resume();
    const upstream = connect(natsPort, '127.0.0.1');
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream)).on('error', () => client.destroy());
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => front.close(resolve));
  });
  const port = (front.address() as { port: number }).port;

  const nc = await connectNats(`nats://127.0.0.1:${port}`, 'first-connect-test');
  t.teardown(() => nc.close());
  t.equal(accepted, 2, 'connected on the second attempt');
  await nc.flush();

  // Nothing listening: refused at once (a refusal is not a timeout).
  front.close();
  for (const s of sockets) s.destroy();
  const refused = await connectNats(`nats://127.0.0.1:${port}`, 'refused-test').then(
    () => null,
    (e: Error) => e,
  );
  t.ok(refused, 'a refused connection fails the start');
});

t.test(
  'a connection whose reconnects time out in authentication keeps trying until one gets in',
  async (t) => {
    // A server (or machine) too busy to read a reconnect's CONNECT in time answers "Authentication
    // Timeout"; nats.js alone closes the connection for good after two of them in a row.
    const nats = await startSecuredNats(t, []);
    const proxy = await startProxy(nats.port, t);
    const nc = await connectNats(proxy.url('nats'), 'auth-timeout', { nkeySeed: nats.identities.agent.seed });
    t.teardown(() => nc.close());
    const authErrors: string[] = [];
    void (async () => {
      for await (const s of nc.status())
        if (s.type === 'error' && /authentication timeout/i.test(String(s.error)))
          authErrors.push(String(s.error));
    })();
    proxy.set({ kind: 'reset' }); // the link drops...
    proxy.set({ kind: 'delay', ms: 3_000, only: 'upstream' }); // ...and every reconnect's CONNECT arrives after the server's 2 s
    // Two in a row: where nats.js alone gives up.
    await pollUntil('two authentication timeouts', async () => (authErrors.length >= 2 ? true : undefined));
    proxy.set({ kind: 'pass' });
    await pollUntil('the connection back', async () => {
      if (nc.isClosed()) return undefined; // closed for good: never back
      await nc.flush();
      return true;
    });
    t.ok(authErrors.length >= 2, `${authErrors.length} authentication timeouts in a row`);
    t.notOk(nc.isClosed(), 'the connection is open again');
  },
);
