import { randomBytes } from 'node:crypto';
import t from 'tap';
import { loadConfig } from '../../lib/config.ts';
import { allowedOrigins, NotifierEnv, originAllowed } from './config.ts';
import { CatchUpReads, hostOf, UnauthenticatedSockets, UserSockets } from './limits.ts';
import { classify, RateLimiter } from './ordering.ts';
import { parseClientMessage } from './protocol.ts';

t.test('classify: what to do with a live event, given the revision last sent', async (t) => {
  t.equal(classify(-1, 0), 'send', 'first event of a new stream');
  t.equal(classify(4, 5), 'send');
  t.equal(classify(4, 4), 'duplicate', 'sent already (replayed, then arrived live)');
  t.equal(classify(4, 2), 'duplicate');
  t.equal(classify(4, 6), 'gap', 'revision 5 is missing: read the store first');
  t.equal(classify(-1, 3), 'gap');
  t.equal(classify(undefined, 17), 'baseline', 'an admin sees this user for the first time');
});

t.test('rate limiter: a burst, then the sustained rate', async (t) => {
  let now = 0;
  const limiter = new RateLimiter(2, 3, () => now);
  t.same([limiter.take(), limiter.take(), limiter.take(), limiter.take()], [true, true, true, false]);
  now += 500; // one token back
  t.equal(limiter.take(), true);
  t.equal(limiter.take(), false);
  now += 10_000; // refills to the burst, not beyond
  t.same([limiter.take(), limiter.take(), limiter.take(), limiter.take()], [true, true, true, false]);
});

t.test('client messages', async (t) => {
  t.match(parseClientMessage('{"type":"auth","token":"abc"}'), {
    ok: true,
    message: { type: 'auth', token: 'abc' },
  });
  t.match(parseClientMessage('{"type":"subscribe"}'), { ok: true, message: { type: 'subscribe' } });
  t.match(parseClientMessage('{"type":"subscribe","userId":"bob","afterRevision":7}'), {
    ok: true,
    message: { userId: 'bob', afterRevision: 7 },
  });
  t.match(
    parseClientMessage('{"type":"subscribe","userId":"*"}'),
    { ok: true, message: { userId: '*' } },
    'admins: every user',
  );
  t.match(parseClientMessage('{"type":"ping"}'), { ok: true });
  for (const bad of [
    'nope',
    '[]',
    'null',
    '{"type":"subscribe","userId":"a.b"}',
    '{"type":"subscribe","userId":">"}',
    '{"type":"subscribe","afterRevision":-2}',
    '{"type":"subscribe","afterRevision":1.5}',
    '{"type":"subscribe","extra":1}',
    '{"type":"auth","token":""}',
    '{"type":"auth","token":"x","__proto__":{"admin":true}}',
    '{"type":"ping","a":{"b":{"c":{"d":{"e":1}}}}}',
  ]) {
    t.equal(parseClientMessage(bad).ok, false, bad);
  }
});

t.test('origins: configured list, or the notifier own', async (t) => {
  const KEYS = { JWT_SECRET: randomBytes(32).toString('hex') };
  const own = allowedOrigins(loadConfig(NotifierEnv, KEYS), 8082);
  t.same([...own].sort(), ['http://127.0.0.1:8082', 'http://localhost:8082']);
  t.ok(originAllowed('http://localhost:8082', own));
  t.ok(originAllowed('HTTP://LOCALHOST:8082', own), 'compared as origins, not strings');
  t.notOk(originAllowed('http://localhost:9999', own));
  t.notOk(originAllowed('https://evil.example', own));
  t.notOk(originAllowed('null', own), 'an opaque origin (sandboxed frame, file:) is foreign');
  t.ok(originAllowed(undefined, own), 'no Origin: not a browser page');

  const configured = allowedOrigins(
    loadConfig(NotifierEnv, {
      ...KEYS,
      NOTIFIER_ALLOWED_ORIGINS: 'https://app.example.com, http://localhost:3000/',
    }),
    8082,
  );
  t.same([...configured], ['https://app.example.com', 'http://localhost:3000']);
  t.notOk(originAllowed('http://localhost:8082', configured), 'the configured list replaces the default');
  t.ok(originAllowed('https://app.example.com', configured));

  const host = allowedOrigins(loadConfig(NotifierEnv, { ...KEYS, HOST: 'notifier.internal' }), 80);
  t.ok(originAllowed('http://notifier.internal', host), 'port 80 is the default port of http');

  t.throws(
    () => loadConfig(NotifierEnv, { ...KEYS, NOTIFIER_ALLOWED_ORIGINS: 'https://app.example.com/path' }),
    /NOTIFIER_ALLOWED_ORIGINS/,
  );
  t.throws(
    () => loadConfig(NotifierEnv, { ...KEYS, NOTIFIER_MAX_BUFFER_BYTES: '-1' }),
    /NOTIFIER_MAX_BUFFER_BYTES/,
  );
});

t.test('user sockets: at most the cap per user, places given back once', async (t) => {
  const places = new UserSockets(2);
  const a1 = places.enter('alice');
  const a2 = places.enter('alice');
  t.ok(a1 && a2);
  t.equal(places.enter('alice'), null, 'a third socket of alice is refused');
  t.ok(places.enter('bob'), 'another user has places of their own');
  a1!();
  a1!(); // a second release does not free a second place
  t.equal(places.of('alice'), 1);
  t.ok(places.enter('alice'), 'a freed place is taken again');
  t.equal(places.enter('alice'), null);
});

/** A read that resolves when the test says so. */
function pending() {
  let finish!: (value: string) => void;
  let fail!: (e: Error) => void;
  const promise = new Promise<string>((resolve, reject) => ((finish = resolve), (fail = reject)));
  return { promise, finish, fail };
}
const settle = () => new Promise((resolve) => setImmediate(resolve));

t.test('catch-up reads: one per user at a time, a few in all, the rest in arrival order', async (t) => {
  const reads = new CatchUpReads(2, 1);
  const started: string[] = [];
  const run = (userId: string, name: string, p = pending()) => ({
    ...p,
    result: reads.run(userId, () => (started.push(name), p.promise)),
  });
  const a1 = run('alice', 'a1');
  const a2 = run('alice', 'a2');
  const a3 = run('alice', 'a3');
  const b1 = run('bob', 'b1');
  const c1 = run('carol', 'c1');
  await settle();
  t.same(started, ['a1', 'b1'], 'one of alice, and bob: the total is two; alice’s others wait, carol too');
  t.same([reads.running, reads.queued], [2, 3]);

  a1.finish('a1 done');
  t.equal(await a1.result, 'a1 done');
  await settle();
  t.same(started, ['a1', 'b1', 'a2'], 'alice’s next one came first (arrival order)');
  b1.fail(new Error('store down'));
  await t.rejects(b1.result, /store down/, 'a failed read is the caller’s failure');
  await settle();
  t.same(started, ['a1', 'b1', 'a2', 'c1'], 'and frees its turn: carol goes, passing alice’s waiting one');
  a2.finish('');
  c1.finish('');
  await Promise.all([a2.result, c1.result]);
  await settle();
  t.same(started.at(-1), 'a3');
  a3.finish('');
  await a3.result;
  t.same([reads.running, reads.queued], [0, 0], 'every turn given back');
});

t.test('catch-up reads: a waiter whose socket closed is dropped without reading', async (t) => {
  const reads = new CatchUpReads(1, 1);
  const first = pending();
  const one = reads.run('alice', () => first.promise);
  let closed = false;
  let ran = false;
  const two = reads.run(
    'alice',
    async () => ((ran = true), 'read'),
    () => closed,
  );
  const three = reads.run('bob', async () => 'bob read');
  closed = true;
  first.finish('first');
  t.equal(await one, 'first');
  t.equal(await two, null, 'resolved with null');
  t.notOk(ran, 'its read never ran');
  t.equal(await three, 'bob read', 'the next one got the turn');
  t.equal(
    await reads.run(
      'carol',
      async () => 'x',
      () => true,
    ),
    null,
    'already closed: no turn taken',
  );
  t.same([reads.running, reads.queued], [0, 0]);
});

t.test('unauthenticated places: per host and in all; loopback addresses are one host', async (t) => {
  t.equal(hostOf('127.0.0.1'), 'loopback');
  t.equal(hostOf('127.45.0.9'), 'loopback');
  t.equal(hostOf('::1'), 'loopback');
  t.equal(hostOf('::ffff:127.0.0.2'), 'loopback');
  t.equal(hostOf('::ffff:10.0.0.7'), '10.0.0.7', 'an IPv4-mapped address is its IPv4 host');
  t.equal(hostOf('10.0.0.7'), '10.0.0.7');
  t.equal(hostOf('128.0.0.1'), '128.0.0.1');
  t.equal(hostOf('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64', 'IPv6: its /64');
  t.equal(hostOf('2001:0db8:0001:0002:ffff:0:0:9'), '2001:db8:1:2::/64', 'the same block, written out');
  t.equal(hostOf('2001:db8::9'), '2001:db8:0:0::/64', 'a short form');
  t.equal(hostOf('fe80::1%eth0'), 'fe80:0:0:0::/64', 'a zone is ignored');
  t.not(hostOf('2001:db8:1:3::1'), hostOf('2001:db8:1:2::1'), 'another /64 is another host');

  const places = new UnauthenticatedSockets(3, 2);
  const a = [places.enter('10.0.0.1'), places.enter('::ffff:10.0.0.1')];
  t.ok(a.every(Boolean), 'two from one host');
  t.equal(places.enter('10.0.0.1'), null, 'a third from that host is refused');
  const b = places.enter('10.0.0.2');
  t.ok(b, 'another host gets in');
  t.equal(places.enter('10.0.0.3'), null, 'a fourth in all is refused, from any host');
  a[0]!();
  a[0]!();
  t.equal(places.size, 2, 'a place is given back once');
  t.ok(places.enter('10.0.0.3'), 'and taken again');
});
