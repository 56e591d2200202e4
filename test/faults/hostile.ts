import fc from 'fast-check';

/**
 * fast-check generators of hostile JSON for the fuzz test: deep nesting, huge strings, unknown
 * keys, `__proto__` / `constructor` / `prototype` keys, wrong types, invalid UTF-8. They produce
 * JSON *text* (or bytes), never objects: an object cannot carry an own `__proto__` key through
 * `JSON.stringify`, and the point is what the services' parsers make of the text.
 */

/** `{"k":v,...}` from keys and JSON texts, keys as given (duplicates and `__proto__` included). */
export const objectText = (entries: Array<[string, string]>): string =>
  `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;

/** Keys that prototype pollution and naive merges trip over, and other awkward ones. */
export const hostileKey = fc.constantFrom(
  '__proto__',
  'constructor',
  'prototype',
  'toString',
  'hasOwnProperty',
  'valueOf',
  '__defineGetter__',
  'isAdmin',
  'admin',
  'roles',
  'userId',
  '',
  ' ',
  '\u0000',
  '\ud800',
  '$where',
  'a.b',
  'x'.repeat(300),
);

/** A value that, merged into a prototype, would make every object an admin or "polluted". */
export const pollution = fc.constantFrom(
  '{"polluted":"yes","isAdmin":true,"admin":true,"roles":["admin"]}',
  '{"prototype":{"polluted":"yes","roles":["admin"]}}',
  '{"__proto__":{"polluted":"yes"}}',
  '"polluted"',
);

/** Arrays nested deeper than the 32 levels a request may have (up to a few thousand). */
export const deepText = fc
  .integer({ min: 33, max: 3_000 })
  .chain((n) => fc.constantFrom(`${'['.repeat(n)}${']'.repeat(n)}`, `${'{"a":'.repeat(n)}1${'}'.repeat(n)}`));

/** A string from 1 KB to past the 256 KiB request limit. */
export const hugeText = fc
  .integer({ min: 1_000, max: 300_000 })
  .map((n) => JSON.stringify('\u00e9x'.repeat(Math.ceil(n / 3)).slice(0, n)));

/** Any JSON value, as text, including odd strings (lone surrogates, control characters). */
export const anyJsonText = fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v));

/** An object whose keys are hostile or random and whose values are anything of the above. */
export const hostileObjectText: fc.Arbitrary<string> = fc
  .array(
    fc.tuple(
      fc.oneof(hostileKey, fc.string({ maxLength: 20 })),
      fc.oneof({ weight: 3, arbitrary: anyJsonText }, pollution, deepText, {
        weight: 1,
        arbitrary: hugeText,
      }),
    ),
    { maxLength: 6 },
  )
  .map(objectText);

/** Values of the wrong type for a field that wants a string (or an object, for `args`). */
export const wrongType = fc.oneof(
  fc.constantFrom('null', 'true', '0', '-1e309', '[]', '{}', '""', '[1,2]', '"\\u0000"'),
  anyJsonText,
  deepText,
);

/** Bytes that are not UTF-8, or not JSON, or not what any field wants. */
export const badBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.uint8Array({ minLength: 1, maxLength: 2_000 }),
  fc.constantFrom(
    new Uint8Array([0xff, 0xfe, 0xfd]),
    new Uint8Array([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xc3, 0x28, 0x22, 0x7d]), // {"a":"\xc3("}
    new Uint8Array([0xed, 0xa0, 0x80]), // an encoded surrogate
    new Uint8Array([0xc0, 0xaf]), // an overlong '/'
    new TextEncoder().encode('{"requestId":'),
    new TextEncoder().encode('not json at all'),
    new Uint8Array(0),
  ),
  deepText.map((s) => new TextEncoder().encode(s)),
);

/** Stand-ins for the request id and the inbox in generated bodies, replaced when a body is sent. */
export const REQUEST_ID = '__REQUEST_ID__';
export const INBOX = '__INBOX__';

/**
 * A request body (as text) with a given request id and reply inbox, whose other fields are
 * fuzzed: the tool (real, unknown, or of the wrong type), the arguments (hostile objects, wrong
 * types, deep, huge), extra and prototype keys, a `userId` that is not the caller's.
 */
export const hostileRequest = (requestId: string, replyTo: string, otherUser: string) =>
  fc
    .record({
      tool: fc.oneof(
        {
          weight: 3,
          arbitrary: fc.constantFrom('"echo"', '"noop"', '"admin_runtime_info"', '"no_such_tool"'),
        },
        fc.constantFrom('"ECHO"', '"echo.1"', '"e"', '">"'),
        wrongType,
      ),
      args: fc.oneof(
        // Well-formed arguments with awkward text: they pass, and their text reaches the stores.
        {
          weight: 3,
          arbitrary: fc.constantFrom(
            '{}',
            '{"a":1}',
            '{"text":"\\u0000"}',
            '{"s":"\\ud800"}',
            '{"k":"\\udfff\\ud800"}',
          ),
        },
        { weight: 2, arbitrary: hostileObjectText },
        wrongType,
      ),
      extra: fc.oneof(
        { weight: 2, arbitrary: fc.constant([] as Array<[string, string]>) },
        fc.array(
          fc.tuple(fc.oneof(hostileKey, fc.string({ maxLength: 12 })), fc.oneof(pollution, anyJsonText)),
          {
            minLength: 1,
            maxLength: 3,
          },
        ),
      ),
      userId: fc.option(fc.constantFrom(JSON.stringify(otherUser), '"*"', '">"', '"a.b"', '1', 'null'), {
        nil: undefined,
        freq: 3,
      }),
      version: fc.option(fc.constantFrom('"1.0.0"', '"9.9.9"', '"x"', '1'), { nil: undefined, freq: 3 }),
      correlationId: fc.option(
        // (An empty correlation id is left out: it is its own test, see hostile-input.e2e.spec.ts.)
        fc.constantFrom('"\\u0000"', '"\\ud800x"', '"\\udc00"', JSON.stringify('c'.repeat(200)), '"ok-1"'),
        { nil: undefined, freq: 2 },
      ),
    })
    .map(({ tool, args, extra, userId, version, correlationId }) =>
      objectText([
        ['requestId', JSON.stringify(requestId)],
        ['replyTo', JSON.stringify(replyTo)],
        ['tool', tool],
        ['args', args],
        ...(userId === undefined ? [] : ([['userId', userId]] as Array<[string, string]>)),
        ...(version === undefined ? [] : ([['version', version]] as Array<[string, string]>)),
        ...(correlationId === undefined
          ? []
          : ([['correlationId', correlationId]] as Array<[string, string]>)),
        ...extra,
      ]),
    );

/** A WebSocket frame that is not a valid client message. */
export const hostileFrame: fc.Arbitrary<string | Uint8Array> = fc.oneof(
  hostileObjectText,
  wrongType,
  fc
    .record({
      type: fc.oneof(fc.constantFrom('"subscribe"', '"auth"', '"ping"'), wrongType),
      more: hostileObjectText,
    })
    .map(({ type, more }) => `{"type":${type},"__proto__":${more},"afterRevision":"x"}`),
  fc.constantFrom(
    '{"type":"subscribe","afterRevision":-2}',
    '{"type":"subscribe","afterRevision":1e400}',
    '{"type":"subscribe","userId":{"__proto__":{"admin":true}}}',
    '{"type":"auth","token":""}',
    '{"type":"ping","extra":1}',
    '{"type":"hello"}',
    'null',
    '[]',
    '',
  ),
  hugeText,
  badBytes,
);
