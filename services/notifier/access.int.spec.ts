import { randomUUID } from 'node:crypto';
import t from 'tap';
import type { WebSocket } from 'ws';
import { CLOSE_CODES, subjects } from '../../contracts/index.ts';
import { signToken } from '../../lib/auth.ts';
import { loadConfig } from '../../lib/config.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import { connectNats } from '../../lib/nats.ts';
import { recordExecution } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { startNats, startRedis } from '../../test/support/processes.ts';
import { startNotifier } from './app.ts';
import { NotifierEnv } from './config.ts';
import { openClient, requestTicket, subscribe, ticketFor, UpgradeRefused, waitFor } from './test-client.ts';

/**
 * Who may connect and what they may see: origins, tickets, tokens, roles, malformed and abusive
 * clients. Real NATS, Redis and PostgreSQL; real WebSocket clients.
 */
const SECRET = 'access-test-secret-that-is-long-enough-0123456789';
const db = await createTestDatabase(t);
const nats = await startNats(t);
const redis = await startRedis(t);
const store = await createPostgresEventStore({ connectionString: db.url });
const publisher = await connectNats(nats.url, 'access-test');
const logLines: string[] = [];
const config = loadConfig(NotifierEnv, {
  NODE_ENV: 'test',
  LOG_LEVEL: 'info',
  NATS_URL: nats.url,
  REDIS_URL: redis.url,
  JWT_SECRET: SECRET,
  NOTIFIER_PORT: '0',
  NOTIFIER_AUTH_TIMEOUT_MS: '1500',
  NOTIFIER_MAX_FRAME_BYTES: '4096',
  NOTIFIER_MAX_MESSAGES_PER_SECOND: '5',
  NOTIFIER_MESSAGE_BURST: '10',
  NOTIFIER_PING_INTERVAL_MS: '700',
});
const notifier = await startNotifier(config, {
  store,
  logStream: { write: (line: string) => void logLines.push(line) },
});
t.teardown(async () => {
  await notifier.close();
  await publisher.close();
  await store.close();
});

/** Every token and ticket used here: none may appear in a log line. */
const secrets: string[] = [];
const token = async (sub: string, roles: string[] = [], exp: string | number = '1h') => {
  const tk = await signToken(SECRET, { sub, roles }, exp);
  secrets.push(tk);
  return tk;
};
const ticket = async (tk: string): Promise<string> => {
  const tx = await ticketFor(notifier.address, tk);
  secrets.push(tx);
  return tx;
};
const user = () => `u${randomUUID().slice(0, 8)}`;
const nowSeconds = () => Math.floor(Date.now() / 1000);

t.test('a foreign Origin is refused before the upgrade, the notifier own origin is accepted', async (t) => {
  const alice = user();
  const tk = await token(alice);
  const tx = await ticket(tk);
  const refused = await openClient(notifier.address, { ticket: tx, origin: 'https://evil.example' }).catch(
    (e: unknown) => e,
  );
  t.ok(refused instanceof UpgradeRefused, 'the upgrade is refused');
  t.equal((refused as UpgradeRefused).status, 403);

  const post = await requestTicket(notifier.address, tk, 'https://evil.example');
  t.equal(post.status, 403, 'POST /tickets from a foreign origin is refused too');
  t.notOk(post.body.ticket);

  // The refused upgrade did not spend the ticket: the page's own origin may still use it.
  const own = await openClient(notifier.address, { ticket: tx, origin: notifier.address });
  own.send({ type: 'subscribe' });
  await own.waitFor('ready', () => own.received.some((n) => n.kind === 'ready'));
  own.ws.close();
});

t.test(
  '/ws opened without an upgrade is told it is a WebSocket endpoint, and spends no ticket',
  async (t) => {
    const tx = await ticket(await token(user()));
    const plain = await fetch(`${notifier.address}/ws?ticket=${encodeURIComponent(tx)}`);
    t.equal(plain.status, 400);
    t.match(await plain.json(), { error: { code: 'BAD_REQUEST', message: /WebSocket endpoint/ } });
    const socket = await openClient(notifier.address, { ticket: tx });
    socket.send({ type: 'subscribe' });
    await socket.waitFor('ready', () => socket.received.some((n) => n.kind === 'ready'));
    socket.ws.close();
  },
);

t.test('a ticket opens exactly one socket; an unknown ticket is refused with 4401', async (t) => {
  const alice = user();
  const tx = await ticket(await token(alice));
  const first = await openClient(notifier.address, { ticket: tx });
  first.send({ type: 'subscribe' });
  await first.waitFor('ready', () => first.received.some((n) => n.kind === 'ready'));
  t.same(first.received.at(-1), { kind: 'ready', userId: alice, revision: -1 });

  const again = await openClient(notifier.address, { ticket: tx });
  const closed = await again.closed;
  t.equal(closed.code, CLOSE_CODES.unauthenticated, 'the reused ticket is refused');
  t.match(again.received[0], { kind: 'error', code: 'UNAUTHENTICATED' });
  t.equal(again.events().length, 0);

  const forged = await openClient(notifier.address, { ticket: 'A'.repeat(43) });
  t.equal((await forged.closed).code, CLOSE_CODES.unauthenticated);
  first.ws.close();
});

t.test('forged, malformed and expired tokens get no ticket and no socket', async (t) => {
  const alice = user();
  const forgedToken = await signToken('another-secret-that-is-also-long-enough-000', { sub: alice }, '1h');
  const expired = await token(alice, [], nowSeconds() - 30);
  secrets.push(forgedToken);

  const noToken = await requestTicket(notifier.address, null);
  t.equal(noToken.status, 401);
  t.equal(noToken.body.error?.details?.reason, 'missing');
  const forged = await requestTicket(notifier.address, forgedToken);
  t.equal(forged.status, 401);
  t.equal(forged.body.error?.details?.reason, 'invalid');
  t.notOk(forged.body.ticket);
  t.equal((await requestTicket(notifier.address, 'not-a-jwt')).status, 401);
  const old = await requestTicket(notifier.address, expired);
  t.equal(old.status, 401);
  t.equal(old.body.error?.details?.reason, 'expired');

  for (const [name, tk] of [
    ['forged', forgedToken],
    ['expired', expired],
  ] as const) {
    const client = await openClient(notifier.address);
    client.send({ type: 'auth', token: tk });
    client.send({ type: 'subscribe', userId: alice });
    t.equal(
      (await client.closed).code,
      CLOSE_CODES.unauthenticated,
      `${name} token in the auth message: 4401`,
    );
    t.equal(client.events().length, 0, `${name}: no event sent`);
  }
});

t.test('a socket closes with 4401 when its token expires', async (t) => {
  const alice = user();
  const shortLived = await token(alice, [], nowSeconds() + 2);
  const client = await openClient(notifier.address);
  client.send({ type: 'auth', token: shortLived });
  client.send({ type: 'subscribe' });
  await client.waitFor('ready', () => client.received.some((n) => n.kind === 'ready'));
  await recordExecution(store, alice, { nats: publisher });
  await client.waitFor('events before expiry', () => client.events().length === 3);
  const closed = await client.closed;
  t.equal(closed.code, CLOSE_CODES.unauthenticated);
  t.match(client.received.at(-1), { kind: 'error', code: 'UNAUTHENTICATED', message: 'token expired' });

  // A ticket exchanged for a short token does not outlive the token either.
  const ticketToken = await token(alice, [], nowSeconds() + 2);
  const ticketed = await openClient(notifier.address, { ticket: await ticket(ticketToken) });
  ticketed.send({ type: 'subscribe' });
  t.equal((await ticketed.closed).code, CLOSE_CODES.unauthenticated);
});

t.test('a socket that never authenticates is closed with 4401', async (t) => {
  const silent = await openClient(notifier.address);
  t.equal((await silent.closed).code, CLOSE_CODES.unauthenticated);
  const eager = await openClient(notifier.address);
  eager.send({ type: 'subscribe' });
  t.equal((await eager.closed).code, CLOSE_CODES.unauthenticated, 'subscribe before auth');
});

t.test('a user cannot watch another user or everyone; nothing of the other user leaks', async (t) => {
  const alice = user();
  const bob = user();
  await recordExecution(store, bob, { nats: publisher });
  const aliceToken = await token(alice);

  const peek = await openClient(notifier.address, { ticket: await ticket(aliceToken) });
  peek.send({ type: 'subscribe', userId: bob, afterRevision: -1 });
  t.equal((await peek.closed).code, CLOSE_CODES.forbidden);
  t.match(peek.received, [{ kind: 'error', code: 'FORBIDDEN' }]);
  t.equal(peek.received.length, 1, 'only the refusal');

  const all = await openClient(notifier.address, { ticket: await ticket(aliceToken) });
  all.send({ type: 'subscribe', userId: '*' });
  t.equal((await all.closed).code, CLOSE_CODES.forbidden);
  t.equal(all.events().length, 0);
  await waitFor('no subscription left for bob', () => !notifier.stats().scopes.includes(bob));
  t.notOk(notifier.stats().scopes.includes('*'), 'no NATS subscription was made for the refused watch');
});

t.test('an admin may watch one user (with replay) or every user (live)', async (t) => {
  const alice = user();
  const bob = user();
  await recordExecution(store, alice, { nats: publisher });
  const adminToken = await token('admin1', ['admin']);

  const one = await subscribe(notifier.address, adminToken, { userId: alice });
  t.same(one.revisions(), [0, 1, 2], 'replayed from the store');
  const everyone = await subscribe(notifier.address, adminToken, { userId: '*' });
  t.match(everyone.received.at(-1), { kind: 'ready', userId: '*', revision: null });

  await recordExecution(store, bob, { nats: publisher });
  await recordExecution(store, alice, { nats: publisher });
  await everyone.waitFor('both users live', () => everyone.events().length === 6);
  await one.waitFor('alice live', () => one.events().length === 6);
  t.same(
    everyone
      .events()
      .filter((e) => e.userId === bob)
      .map((e) => e.revision),
    [0, 1, 2],
  );
  t.same(
    everyone
      .events()
      .filter((e) => e.userId === alice)
      .map((e) => e.revision),
    [3, 4, 5],
  );
  t.ok(one.events().every((e) => e.userId === alice));
  one.ws.close();
  everyone.ws.close();
  await waitFor(
    'the * subscription is dropped with its last socket',
    () => !notifier.stats().scopes.includes('*'),
  );
});

t.test('malformed, binary and oversized frames close the socket', async (t) => {
  const alice = user();
  const tk = await token(alice);
  const cases: Array<[string, (ws: WebSocket) => void, number]> = [
    ['not JSON', (ws) => ws.send('{nope'), CLOSE_CODES.badMessage],
    [
      'unknown message',
      (ws) => ws.send(JSON.stringify({ type: 'delete-everything' })),
      CLOSE_CODES.badMessage,
    ],
    [
      'bad field',
      (ws) => ws.send(JSON.stringify({ type: 'subscribe', afterRevision: 'x' })),
      CLOSE_CODES.badMessage,
    ],
    ['binary', (ws) => ws.send(Buffer.from([1, 2, 3])), CLOSE_CODES.badMessage],
    [
      'oversized',
      (ws) => ws.send(JSON.stringify({ type: 'auth', token: 'x'.repeat(5000) })),
      CLOSE_CODES.tooBig,
    ],
  ];
  const linesBefore = logLines.length;
  for (const [name, send, code] of cases) {
    const client = await openClient(notifier.address, { ticket: await ticket(tk) });
    send(client.ws);
    t.equal((await client.closed).code, code, name);
    t.equal(client.events().length, 0);
  }
  // Any client can send these as often as it likes: none is the notifier's error.
  const errors = logLines
    .slice(linesBefore)
    .filter((line) => (JSON.parse(line) as { level: number }).level >= 50);
  t.same(errors, [], 'no error logged for what a client sent');
});

t.test('a client sending too many messages is closed with 4429', async (t) => {
  const client = await subscribe(notifier.address, await token(user()));
  for (let i = 0; i < 40; i++) client.send({ type: 'ping' });
  t.equal((await client.closed).code, CLOSE_CODES.rateLimited);
  t.match(client.received.at(-1), { kind: 'error', code: 'RATE_LIMITED' });
});

t.test('a dead connection (no pong) is terminated', async (t) => {
  const alice = user();
  const client = await subscribe(notifier.address, await token(alice));
  const before = notifier.stats().sockets;
  (client.ws as unknown as { _socket: { pause(): void } })._socket.pause();
  await waitFor('the notifier drops the socket', () => notifier.stats().sockets === before - 1, 15_000);
  t.notOk(notifier.stats().scopes.includes(alice), 'its NATS subscription went with it');
  client.ws.terminate();
});

t.test('with Redis down, tickets are refused (503) and the auth message still works', async (t) => {
  const alice = user();
  const tk = await token(alice);
  await redis.kill();
  try {
    const res = await requestTicket(notifier.address, tk);
    t.equal(res.status, 503);
    t.equal(res.body.error?.code, 'TICKETS_UNAVAILABLE');
    const client = await openClient(notifier.address);
    client.send({ type: 'auth', token: tk });
    client.send({ type: 'subscribe' });
    await client.waitFor('ready', () => client.received.some((n) => n.kind === 'ready'));
    await recordExecution(store, alice, { nats: publisher });
    await client.waitFor('events', () => client.events().length === 3);
    client.ws.close();
  } finally {
    await redis.start();
  }
  // Tickets again once the notifier's Redis client has reconnected (its backoff, on a busy
  // machine, can be long: the bound is only there to end a test that would never pass).
  let status = 0;
  for (const deadline = Date.now() + 60_000; status !== 201 && Date.now() < deadline;) {
    status = (await requestTicket(notifier.address, tk)).status;
    if (status !== 201) await new Promise((r) => setTimeout(r, 200));
  }
  t.equal(status, 201, 'tickets are issued again after Redis is back');
});

t.test('progress reaches only its user', async (t) => {
  const alice = user();
  const bob = user();
  const a = await subscribe(notifier.address, await token(alice));
  const b = await subscribe(notifier.address, await token(bob));
  // Progress is shown for an execution the store holds as running.
  const running = await recordExecution(store, alice, { nats: publisher, outcome: 'executing' });
  await a.waitFor('the running execution', () => a.events().length === 2);
  const progress = {
    kind: 'progress',
    userId: alice,
    executionId: running.executionId,
    correlationId: 'c1',
    fraction: 0.5,
    message: 'halfway',
  };
  publisher.publish(subjects.progress(alice), JSON.stringify(progress));
  // A message on alice's subject that names bob is not delivered to anyone.
  publisher.publish(subjects.progress(alice), JSON.stringify({ ...progress, userId: bob }));
  await a.waitFor('progress', () => a.received.some((n) => n.kind === 'progress'));
  await recordExecution(store, bob, { nats: publisher });
  await b.waitFor('bob events', () => b.events().length === 3);
  t.same(
    a.received.filter((n) => n.kind === 'progress'),
    [progress],
  );
  t.equal(b.received.filter((n) => n.kind === 'progress').length, 0);
  a.ws.close();
  b.ws.close();
});

t.test('progress reaches each socket once while an admin watches everyone', async (t) => {
  const alice = user();
  const own = await subscribe(notifier.address, await token(alice));
  const everyone = await subscribe(notifier.address, await token('root', ['admin']), { userId: '*' });
  const running = await recordExecution(store, alice, { nats: publisher, outcome: 'executing' });
  await own.waitFor('the running execution', () => own.events().length === 2);
  await everyone.waitFor('the running execution', () => everyone.events().length === 2);
  const progress = (fraction: number) => ({
    kind: 'progress',
    userId: alice,
    executionId: running.executionId,
    correlationId: 'c1',
    fraction,
  });
  // Both subscriptions of the notifier (alice's and everyone's) carry each message.
  for (const f of [0.5, 1]) publisher.publish(subjects.progress(alice), JSON.stringify(progress(f)));
  const fractions = (c: typeof own) =>
    c.received.filter((n) => n.kind === 'progress').map((n) => (n as { fraction: number }).fraction);
  await own.waitFor('the last progress', () => fractions(own).includes(1));
  await everyone.waitFor('the last progress', () => fractions(everyone).includes(1));
  // Then an event: anything still on its way arrives before it.
  await recordExecution(store, alice, { nats: publisher });
  await own.waitFor('the next execution', () => own.events().length === 5);
  await everyone.waitFor('the next execution', () => everyone.events().length === 5);
  t.strictSame(fractions(own), [0.5, 1], "alice's socket: each once");
  t.strictSame(fractions(everyone), [0.5, 1], "the admin's socket: each once");
  own.ws.close();
  everyone.ws.close();
});

t.test('no token or ticket reaches the logs', async (t) => {
  const text = logLines.join('');
  t.ok(text.includes('refused a foreign origin'), 'refusals are logged');
  t.ok(text.includes('closing socket'), 'closed sockets are logged');
  for (const s of secrets) t.notOk(text.includes(s), 'secret absent from logs');
  t.notOk(/ticket=/.test(text), 'no ticket query string logged');
});
