import t from 'tap';
import { startNotifierFixture } from './notifier-fixture.ts';
import { CLOSE_TRY_AGAIN_LATER } from '../../services/notifier/app.ts';
import {
  openClient,
  requestTicket,
  ticketFor,
  type TestClient,
} from '../../services/notifier/test-client.ts';

/**
 * Limits that cost an attacker more than the service: sockets that have not authenticated yet
 * are capped (in all and per remote address), and tickets are rationed per user.
 */
const {
  notifier,
  user,
  token: tokenOf,
} = await startNotifierFixture(t, {
  // Long enough that no socket of these tests is closed for want of an auth message.
  NOTIFIER_AUTH_TIMEOUT_MS: '60000',
  NOTIFIER_MAX_UNAUTHENTICATED: '3',
  NOTIFIER_MAX_UNAUTHENTICATED_PER_ADDRESS: '2',
  NOTIFIER_TICKETS_PER_MINUTE: '3',
});
const refusals = async (reason: string) =>
  (await notifier.app.metrics.getSingleMetric('toolbus_notifier_refused_total')!.get()).values.find(
    (v) => v.labels['reason'] === reason,
  )?.value ?? 0;

const unauthenticatedNow = async () =>
  (await notifier.app.metrics.getSingleMetric('toolbus_notifier_unauthenticated_sockets')!.get()).values[0]
    ?.value ?? 0;

/** Sends the auth message and subscribes; resolves once the socket is live (it was accepted). */
async function authenticate(client: TestClient, token: string): Promise<void> {
  client.send({ type: 'auth', token });
  client.send({ type: 'subscribe' });
  await client.waitFor('ready', () => client.received.some((n) => n.kind === 'ready') || client.isClosed());
  if (client.isClosed()) throw new Error(`closed: ${JSON.stringify(await client.closed)}`);
}

t.test('unauthenticated sockets are capped per host; every loopback address is one host', async (t) => {
  const refusedBefore = await refusals('unauthenticated_sockets');
  const a1 = await openClient(notifier.address, { localAddress: '127.0.0.1' });
  const a2 = await openClient(notifier.address, { localAddress: '127.0.0.1' });
  const a3 = await openClient(notifier.address, { localAddress: '127.0.0.1' });
  t.equal((await a3.closed).code, CLOSE_TRY_AGAIN_LATER, 'a third from one address is refused');
  t.notOk(a1.isClosed() || a2.isClosed(), 'the first two stay open');
  // Another loopback address is the same machine: a local process cannot take a cap per address.
  const b1 = await openClient(notifier.address, { localAddress: '127.0.0.2' });
  t.equal((await b1.closed).code, CLOSE_TRY_AGAIN_LATER, 'a third from 127.0.0.2 is refused too');
  t.equal((await refusals('unauthenticated_sockets')) - refusedBefore, 2, 'both refusals are counted');

  // A socket with a ticket is authenticated from the start: it does not count.
  const alice = user();
  const withTicket = await openClient(notifier.address, {
    ticket: await ticketFor(notifier.address, await tokenOf(alice)),
    localAddress: '127.0.0.3',
  });
  withTicket.send({ type: 'subscribe' });
  await withTicket.waitFor('ready', () => withTicket.received.some((n) => n.kind === 'ready'));

  // Authenticating gives the place back.
  await authenticate(a1, await tokenOf(alice));
  const a4 = await openClient(notifier.address, { localAddress: '127.0.0.4' });
  await authenticate(a4, await tokenOf(alice));
  t.pass('a socket from this machine is accepted again once one of them authenticated');

  // Closing does too.
  const a5 = await openClient(notifier.address, { localAddress: '127.0.0.1' });
  const a6 = await openClient(notifier.address, { localAddress: '127.0.0.6' });
  t.equal((await a6.closed).code, CLOSE_TRY_AGAIN_LATER, 'full again (a2 and a5 wait to authenticate)');
  a2.ws.close();
  const deadline = Date.now() + 20_000;
  while ((await unauthenticatedNow()) > 1) {
    if (Date.now() > deadline) throw new Error('the closed socket still counts');
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  const c2 = await openClient(notifier.address, { localAddress: '127.0.0.5' });
  await authenticate(c2, await tokenOf(alice));
  t.pass('and once one of them closed');

  for (const c of [a1, a4, a5, withTicket, c2]) c.ws.close();
});

t.test('tickets are rationed per user: 429 with Retry-After, other users unaffected', async (t) => {
  const mallory = user();
  const token = await tokenOf(mallory);
  for (let i = 0; i < 3; i++) t.equal((await requestTicket(notifier.address, token)).status, 201);
  const res = await fetch(new URL('/tickets', notifier.address), {
    method: 'POST',
    headers: { authorization: `Bearer ${token}` },
  });
  t.equal(res.status, 429, 'the fourth ticket in a minute is refused');
  const retryAfter = Number(res.headers.get('retry-after'));
  t.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After names the seconds left (${retryAfter})`);
  t.match(await res.json(), { error: { code: 'TOO_MANY_TICKETS' } });
  t.ok((await refusals('ticket_rate')) >= 1, 'the refusal is counted');

  const bob = await tokenOf(user());
  t.equal((await requestTicket(notifier.address, bob)).status, 201, 'another user still gets tickets');
});
