import { createHash } from 'node:crypto';
import t from 'tap';
import fc from 'fast-check';
import { canonicalJson, chainEvents, envelopeEvents, eventHash, verifyChain } from './chain.ts';
import { GENESIS_HASH, ToolEvent, type ToolEventBody } from './events.ts';
import { eventIdFor, executionIdFor } from './ids.ts';

type Unhashed = Parameters<typeof chainEvents<ToolEvent>>[0][number];

/**
 * One execution's events as they would be appended: deterministic ids, causation links, increasing
 * timestamps. `prevHash` is a placeholder; `chainEvents` sets it.
 */
function executionEvents(requestId: string, outcome: 'completed' | 'failed', startSecond = 0): Unhashed[] {
  const executionId = executionIdFor('alice', requestId);
  const bodies: ToolEventBody[] = [
    {
      type: 'ToolRequested',
      data: { tool: 'echo', version: '1.0.0', args: { text: requestId, n: 1 }, redacted: [] },
    },
    { type: 'ToolExecuting', data: { attempt: 1, runner: 'dispatcher-1', timeoutMs: 5000 } },
    outcome === 'completed'
      ? {
          type: 'ToolCompleted',
          data: { result: { echoed: requestId }, redacted: [], durationMs: 4, cached: false },
        }
      : { type: 'ToolFailed', data: { error: { code: 'TIMEOUT', message: 'slow' }, durationMs: 5000 } },
  ];
  const steps = ['requested', 'executing:1', 'terminal'] as const;
  let causationId: string | null = null;
  return bodies.map((b, i) => {
    const id = eventIdFor(executionId, steps[i]!);
    const event = {
      id,
      type: b.type,
      schemaVersion: 1,
      data: b.data,
      metadata: {
        userId: 'alice',
        executionId,
        requestId,
        correlationId: `corr-${requestId}`,
        causationId,
        occurredAt: new Date(Date.UTC(2025, 0, 1, 0, 0, startSecond + i)).toISOString(),
        prevHash: GENESIS_HASH,
      },
    } as Unhashed;
    causationId = id;
    return event;
  });
}

/** A user stream of two executions: six valid, chained events. */
const stream = (): ToolEvent[] =>
  chainEvents<ToolEvent>([
    ...executionEvents('req-1', 'completed', 0),
    ...executionEvents('req-2', 'failed', 10),
  ]);

/** Rebuilds every object with its keys in reverse order, as a database might hand them back. */
function reverseKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(reverseKeys);
  if (v !== null && typeof v === 'object') {
    return Object.fromEntries(
      Object.keys(v)
        .reverse()
        .map((k) => [k, reverseKeys((v as Record<string, unknown>)[k])]),
    );
  }
  return v;
}

t.test('canonicalJson', async (t) => {
  t.test('sorts keys, at every level, and keeps array order', async (t) => {
    t.equal(canonicalJson({ b: 1, a: 2 }), '{"a":2,"b":1}');
    t.equal(
      canonicalJson({ z: { y: 1, x: [3, 1, { d: 0, c: 0 }] }, a: null }),
      '{"a":null,"z":{"x":[3,1,{"c":0,"d":0}],"y":1}}',
    );
    t.equal(canonicalJson([{ b: 1, a: 1 }, 2]), '[{"a":1,"b":1},2]');
  });

  t.test('writes no whitespace', async (t) => {
    t.equal(canonicalJson({ a: [1, 2], b: { c: 'x y' } }), '{"a":[1,2],"b":{"c":"x y"}}');
  });

  t.test('sorts keys by UTF-16 code units (RFC 8785), not by code point', async (t) => {
    // U+20AC (20AC) < U+1F600 (surrogates D83D DE00) < U+FB33 (FB33) in UTF-16 code units
    const value = { '\ufb33': 3, '\u{1F600}': 2, '\u20ac': 1, B: 0, a: 0, '1': 0 };
    t.equal(canonicalJson(value), '{"1":0,"B":0,"a":0,"\u20ac":1,"\u{1F600}":2,"\ufb33":3}');
  });

  t.test('is independent of key order', async (t) => {
    t.equal(canonicalJson({ a: 1, b: { c: 2, d: 3 } }), canonicalJson({ b: { d: 3, c: 2 }, a: 1 }));
    fc.assert(
      fc.property(fc.jsonValue(), (v) => {
        const s = canonicalJson(v);
        if (canonicalJson(reverseKeys(v)) !== s) throw new Error('key order changed the encoding');
        // the encoding is JSON, and encoding its parse gives the same bytes
        if (canonicalJson(JSON.parse(s)) !== s) throw new Error('not stable under a JSON round trip');
      }),
      { numRuns: 300 },
    );
    t.pass('property holds');
  });

  t.test('orders keys as a plain sort does, for few keys and many, numeric-looking or not', async (t) => {
    // The encoder sorts small objects itself and caches quoted keys; this is the rule spelled plainly.
    const plain = (v: unknown): string => {
      if (Array.isArray(v)) return `[${v.map(plain).join(',')}]`;
      if (v !== null && typeof v === 'object') {
        const o = v as Record<string, unknown>;
        const keys = Object.keys(o)
          .filter((k) => o[k] !== undefined)
          .sort();
        return `{${keys.map((k) => `${JSON.stringify(k)}:${plain(o[k])}`).join(',')}}`;
      }
      return JSON.stringify(v);
    };
    const key = fc.oneof(
      fc.string({ maxLength: 4 }),
      fc.nat(40).map(String),
      fc.constantFrom('a', 'B', '\u20ac'),
    );
    const value = fc.letrec((tie) => ({
      node: fc.oneof(
        { depthSize: 'small' },
        fc.jsonValue({ maxDepth: 1 }),
        fc.dictionary(key, tie('node'), { maxKeys: 40 }),
        fc.array(tie('node'), { maxLength: 3 }),
      ),
    })).node;
    fc.assert(
      fc.property(value, (v) => {
        if (canonicalJson(v) !== plain(v)) throw new Error(`${canonicalJson(v)} !== ${plain(v)}`);
      }),
      { numRuns: 500 },
    );
    t.pass('property holds');
  });

  t.test('escapes strings and keys as JSON', async (t) => {
    t.equal(canonicalJson('a"b\\c\nd\te'), String.raw`"a\"b\\c\nd\te"`);
    t.equal(canonicalJson('\u0001\u001f'), String.raw`"\u0001\u001f"`);
    t.equal(canonicalJson({ 'k"\n': 'v' }), String.raw`{"k\"\n":"v"}`);
    t.equal(canonicalJson('é😀'), '"é😀"', 'non-ASCII stays as is');
    t.equal(
      canonicalJson('\ud800'),
      String.raw`"\ud800"`,
      'a lone surrogate is escaped (well-formed output)',
    );
    t.equal(canonicalJson('</script>'), '"</script>"');
    t.strictSame(JSON.parse(canonicalJson({ 'a"': ['\\', '\n'] })), { 'a"': ['\\', '\n'] });
  });

  t.test('numbers and literals as JSON.stringify writes them', async (t) => {
    t.equal(canonicalJson(1e21), '1e+21');
    t.equal(canonicalJson(0.1), '0.1');
    t.equal(canonicalJson(-0), '0');
    t.equal(canonicalJson(100), '100');
    t.equal(canonicalJson(true), 'true');
    t.equal(canonicalJson(null), 'null');
    t.equal(canonicalJson({}), '{}');
    t.equal(canonicalJson([]), '[]');
  });

  t.test('leaves out undefined properties, like JSON.stringify', async (t) => {
    t.equal(canonicalJson({ a: undefined, b: 1 }), '{"b":1}');
  });

  t.test('refuses what JSON cannot carry', async (t) => {
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      t.throws(() => canonicalJson(bad), TypeError, String(bad));
      t.throws(() => canonicalJson({ a: [1, bad] }), TypeError, `nested ${bad}`);
    }
    t.throws(() => canonicalJson(undefined), TypeError, 'undefined');
    t.throws(() => canonicalJson(() => 1), TypeError, 'a function');
    t.throws(() => canonicalJson(Symbol('s')), TypeError, 'a symbol');
    t.throws(() => canonicalJson(10n), TypeError, 'a bigint');
  });
});

t.test('chainEvents', async (t) => {
  const events = stream();

  t.test('gives events that pass the ToolEvent schema unchanged', async (t) => {
    for (const e of events) t.strictSame(ToolEvent.parse(e), e, `${e.type} ${e.id}`);
  });

  t.test('links each event to the one before, starting at GENESIS_HASH', async (t) => {
    t.equal(events[0]!.metadata.prevHash, GENESIS_HASH);
    for (let i = 1; i < events.length; i++) {
      t.equal(
        events[i]!.metadata.prevHash,
        events[i - 1]!.metadata.hash,
        `event ${i} points at event ${i - 1}`,
      );
    }
    t.equal(new Set(events.map((e) => e.metadata.hash)).size, events.length, 'every hash differs');
    for (const e of events) t.not(e.metadata.hash, GENESIS_HASH);
  });

  t.test('each hash is SHA-256 over the canonical event without its hash', async (t) => {
    for (const e of events) {
      const { hash, ...metadata } = e.metadata;
      const expected = createHash('sha256')
        .update(
          canonicalJson({ id: e.id, type: e.type, schemaVersion: e.schemaVersion, data: e.data, metadata }),
        )
        .digest('hex');
      t.equal(hash, expected);
      t.equal(eventHash(e), hash);
    }
  });

  t.test('the hash covers prevHash: the same event after another head hashes differently', async (t) => {
    const [first] = executionEvents('req-1', 'completed');
    const a = chainEvents<ToolEvent>([first!])[0]!;
    const b = chainEvents<ToolEvent>([first!], 'f'.repeat(64))[0]!;
    t.equal(b.metadata.prevHash, 'f'.repeat(64));
    t.not(a.metadata.hash, b.metadata.hash);
  });

  t.test('continues a chain from a given head', async (t) => {
    const first = chainEvents<ToolEvent>(executionEvents('req-1', 'completed', 0));
    const head = first.at(-1)!.metadata.hash;
    const second = chainEvents<ToolEvent>(executionEvents('req-2', 'failed', 10), head);
    t.strictSame([...first, ...second], events, 'chaining in two appends gives the same stream as in one');
    t.equal(verifyChain(second, head), null, 'the second part verifies from the head');
    t.match(verifyChain(second), { index: 0 }, 'but not from genesis');
  });

  t.test('does not modify its input', async (t) => {
    const input = executionEvents('req-1', 'completed');
    const copy = structuredClone(input);
    chainEvents<ToolEvent>(input);
    t.strictSame(input, copy);
  });

  t.test('the chain survives storage: zod parse, JSON round trip, other key order', async (t) => {
    const stored = events.map((e) => ToolEvent.parse(reverseKeys(JSON.parse(JSON.stringify(e)))));
    t.equal(verifyChain(stored), null);
  });
});

t.test('verifyChain', async (t) => {
  t.test('a valid chain verifies', async (t) => {
    t.equal(verifyChain(stream()), null);
    t.equal(verifyChain([]), null, 'an empty stream');
    t.equal(verifyChain(stream().slice(0, 1)), null, 'one event');
  });

  t.test('accepts any iterable', async (t) => {
    const events = stream();
    function* gen() {
      yield* events;
    }
    t.equal(verifyChain(gen()), null);
  });

  t.test('detects a changed data field at its index', async (t) => {
    const events = stream();
    (events[2]!.data as { result: unknown }).result = { echoed: 'forged' };
    const broken = verifyChain(events);
    t.match(broken, { index: 2, eventId: events[2]!.id, problem: /does not cover the content/ });
  });

  t.test('detects a changed nested argument', async (t) => {
    const events = stream();
    (events[3]!.data as { args: Record<string, unknown> }).args['n'] = 2;
    t.match(verifyChain(events), { index: 3, eventId: events[3]!.id });
  });

  t.test('detects a changed metadata field at its index', async (t) => {
    for (const [field, value] of [
      ['occurredAt', '2030-01-01T00:00:00.000Z'],
      ['userId', 'mallory'],
      ['correlationId', 'other'],
      ['causationId', null],
    ] as const) {
      const events = stream();
      (events[1]!.metadata as Record<string, unknown>)[field] = value;
      t.match(verifyChain(events), { index: 1, eventId: events[1]!.id }, `metadata.${field}`);
    }
  });

  t.test('detects a changed type or id', async (t) => {
    const events = stream();
    (events[5] as { type: string }).type = 'ToolCompleted';
    t.match(verifyChain(events), { index: 5 });
    const again = stream();
    again[4]!.id = eventIdFor('x', 'requested');
    t.match(verifyChain(again), { index: 4 });
  });

  t.test('detects a change whose own hash was recomputed, at the next event', async (t) => {
    const events = stream();
    const forged = { ...events[2]!, data: { ...events[2]!.data, result: 'forged' } } as ToolEvent;
    forged.metadata = { ...forged.metadata, hash: eventHash(forged) };
    events[2] = forged;
    t.match(verifyChain(events), { index: 3, eventId: events[3]!.id, problem: /prevHash/ });
  });

  t.test('detects a removed event, at the event after the gap', async (t) => {
    for (const removed of [0, 2, 4]) {
      const events = stream();
      const next = events[removed + 1]!;
      events.splice(removed, 1);
      t.match(
        verifyChain(events),
        { index: removed, eventId: next.id, problem: /prevHash/ },
        `event ${removed} removed`,
      );
    }
  });

  t.test('detects two swapped events, at the first of them', async (t) => {
    for (const i of [0, 2, 4]) {
      const events = stream();
      [events[i], events[i + 1]] = [events[i + 1]!, events[i]!];
      t.match(verifyChain(events), { index: i, eventId: events[i].id }, `events ${i} and ${i + 1} swapped`);
    }
  });

  t.test('detects an inserted duplicate', async (t) => {
    const events = stream();
    events.splice(3, 0, events[2]!);
    t.match(verifyChain(events), { index: 3 });
  });

  t.test('detects a replaced hash', async (t) => {
    const events = stream();
    events[0]!.metadata.hash = 'a'.repeat(64);
    t.match(verifyChain(events), { index: 0, problem: /does not cover/ });
  });
});

t.test('envelopeEvents: deterministic ids by step, each caused by the one before, one chain', async (t) => {
  const executionId = executionIdFor('ada', 'r-1');
  const context = {
    userId: 'ada',
    executionId,
    requestId: 'r-1',
    correlationId: 'c-1',
    causationId: 'r-1',
    occurredAt: (i: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString(),
  };
  const bodies: ToolEventBody[] = [
    { type: 'ToolRequested', data: { tool: 'noop', version: '1.0.0', args: {}, redacted: [] } },
    { type: 'ToolExecuting', data: { attempt: 2, runner: 'r', timeoutMs: 10 } },
    { type: 'ToolCompleted', data: { result: null, redacted: [], durationMs: 1, cached: false } },
  ];
  const events = envelopeEvents(bodies, context);
  t.strictSame(
    events.map((e) => e.id),
    [
      eventIdFor(executionId, 'requested'),
      eventIdFor(executionId, 'executing:2'),
      eventIdFor(executionId, 'terminal'),
    ],
  );
  t.strictSame(
    events.map((e) => e.metadata.causationId),
    ['r-1', events[0]!.id, events[1]!.id],
  );
  t.equal(events[1]!.metadata.occurredAt, '2026-01-01T00:00:01.000Z');
  t.equal(verifyChain(events), null, 'a valid chain from genesis');
  t.strictSame(envelopeEvents(bodies, context), events, 'the same bodies give the same events');
  const after = envelopeEvents(
    bodies.slice(2),
    { ...context, causationId: events[1]!.id, occurredAt: () => events[2]!.metadata.occurredAt },
    events[1]!.metadata.hash,
  );
  t.strictSame(after[0], events[2], 'a step built alone after the ones before is the same event');
});
