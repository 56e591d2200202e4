import t from 'tap';
import { redact, REDACTED } from './redact.ts';

t.test('listed top-level fields are replaced on a copy', async (t) => {
  const args = { apiKey: 'sk-123', user: 'ann', nested: { apiKey: 'inner' } };
  const before = structuredClone(args);
  const { value, redacted } = redact(args, ['apiKey', 'password']);
  t.strictSame(value, { apiKey: REDACTED, user: 'ann', nested: { apiKey: 'inner' } });
  t.strictSame(redacted, ['apiKey'], 'only fields that were present are listed');
  t.strictSame(args, before, 'the input is not changed');
  t.not(value, args);
  t.equal(REDACTED, '[REDACTED]');
});

t.test('falsy values are still secrets; undefined ones are not there', async (t) => {
  const { value, redacted } = redact({ a: '', b: 0, c: null, d: undefined, e: false }, [
    'a',
    'b',
    'c',
    'd',
    'e',
  ]);
  t.strictSame(redacted, ['a', 'b', 'c', 'e']);
  t.strictSame(value, { a: REDACTED, b: REDACTED, c: REDACTED, d: undefined, e: REDACTED });
});

t.test('nothing to redact gives the same value back', async (t) => {
  const args = { x: 1 };
  t.equal(redact(args, []).value, args);
  t.equal(redact(args, ['y']).value, args);
  for (const v of [null, 'secret', 42, ['apiKey'], undefined]) {
    t.strictSame(redact(v, ['apiKey']), { value: v, redacted: [] }, JSON.stringify(v));
  }
});

t.test('a field named __proto__ stays an own key and the prototype is untouched', async (t) => {
  const args = JSON.parse('{"__proto__": {"polluted": true}, "secret": "s"}') as Record<string, unknown>;
  const { value, redacted } = redact(args, ['secret']);
  t.strictSame(redacted, ['secret']);
  t.ok(Object.prototype.hasOwnProperty.call(value, '__proto__'));
  t.equal(Object.getPrototypeOf(value), Object.prototype);
  t.equal(({} as Record<string, unknown>)['polluted'], undefined);
  t.equal(JSON.stringify(value), '{"__proto__":{"polluted":true},"secret":"[REDACTED]"}');
});

t.test('listing a field twice redacts it once', async (t) => {
  t.strictSame(redact({ k: 1 }, ['k', 'k']).redacted, ['k']);
});
