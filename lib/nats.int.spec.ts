import { createServer, connect, type Socket } from 'node:net';
import t from 'tap';
import { startNats } from '../test/support/processes.ts';
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
