import { createServer, connect, type Socket } from 'node:net';

/**
 * A TCP proxy of our own in front of a service, for faults that kill nothing: delay every chunk,
 * stall (hold data, keep connections), reset (destroy every connection), or black-hole (accept and
 * swallow everything, answer nothing). There is no netem on this machine.
 */
export type ProxyMode =
  | { kind: 'pass' }
  /** `upstream`: only what clients send is delayed (a server slow to read, not to answer). */
  | { kind: 'delay'; ms: number; only?: 'upstream' }
  | { kind: 'stall' }
  | { kind: 'reset' }
  | { kind: 'blackhole' };

export interface TcpProxy {
  port: number;
  url(scheme: string, path?: string): string;
  set(mode: ProxyMode): void;
  close(): Promise<void>;
}

export async function startProxy(
  targetPort: number,
  t?: { teardown(fn: () => Promise<void>): void },
): Promise<TcpProxy> {
  let mode: ProxyMode = { kind: 'pass' };
  const pairs = new Set<[Socket, Socket]>();
  const stalled: Array<() => void> = [];

  const forward = (from: Socket, to: Socket, upstream: boolean) => {
    from.on('data', (chunk: Buffer) => {
      const send = () => to.writable && to.write(chunk);
      switch (mode.kind) {
        case 'pass':
          return send();
        case 'delay':
          if (mode.only === 'upstream' && !upstream) return send();
          return void setTimeout(send, mode.ms);
        case 'stall':
          return void stalled.push(send);
        case 'blackhole':
          return;
        case 'reset':
          from.destroy();
          to.destroy();
      }
    });
  };

  const server = createServer((client) => {
    if (mode.kind === 'reset') return client.destroy();
    const upstream = connect(targetPort, '127.0.0.1');
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    forward(client, upstream, true);
    forward(upstream, client, false);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  const proxy: TcpProxy = {
    port,
    url: (scheme, path = '') => `${scheme}://127.0.0.1:${port}${path}`,
    set(next) {
      mode = next;
      if (next.kind === 'reset') {
        for (const [a, b] of pairs) {
          a.destroy();
          b.destroy();
        }
      }
      if (next.kind === 'pass' || next.kind === 'delay') stalled.splice(0).forEach((send) => send());
    },
    async close() {
      for (const [a, b] of pairs) {
        a.destroy();
        b.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  t?.teardown(() => proxy.close());
  return proxy;
}
