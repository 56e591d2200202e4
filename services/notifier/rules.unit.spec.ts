import { randomBytes } from 'node:crypto';
import t from 'tap';
import { loadConfig } from '../../lib/config.ts';
import { allowedOrigins, NotifierEnv, originAllowed } from './config.ts';
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
