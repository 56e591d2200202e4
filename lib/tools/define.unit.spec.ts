import t from 'tap';
import { z } from 'zod';
import { ToolManifest } from '../../contracts/index.ts';
import { defineTool, toManifest, ToolDefinitionError, type ToolDefinition } from './index.ts';

const base = () =>
  ({
    name: 'web_search',
    version: '1.2.3',
    description: 'Searches.',
    input: z.object({ q: z.string(), limit: z.number().int().default(10), apiKey: z.string().optional() }),
    output: z.object({ hits: z.array(z.string()), token: z.string() }),
    async run() {
      return { hits: [], token: 't' };
    },
  }) satisfies ToolDefinition;

/** The error a definition is refused with, or undefined when it is accepted. */
function refusal(def: unknown): ToolDefinitionError | undefined {
  try {
    toManifest(def as ToolDefinition);
  } catch (e) {
    if (e instanceof ToolDefinitionError) return e;
    throw e;
  }
  return undefined;
}

t.test('a good definition becomes a manifest that passes the contract, with defaults', async (t) => {
  const m = toManifest(base());
  t.ok(ToolManifest.safeParse(m).success);
  t.equal(m.timeoutMs, 30_000);
  t.equal(m.idempotent, false);
  t.equal(m.cacheable, false);
  t.strictSame(m.roles, []);
  t.strictSame(m.sensitive, { input: [], output: [] });
  t.equal(m.inputSchema['type'], 'object');
  // The input is described as callers write it: a field with a default is optional.
  t.strictSame(m.inputSchema['required'], ['q']);
  // The output as the tool returns it.
  t.strictSame(m.outputSchema['required'], ['hits', 'token']);
  t.notOk('annotations' in m);
});

t.test('every declared property reaches the manifest', async (t) => {
  const m = toManifest({
    ...base(),
    roles: ['admin', 'analyst'],
    timeoutMs: 1_000,
    idempotent: true,
    cacheable: true,
    sensitive: { input: ['apiKey'], output: ['token'] },
    annotations: { title: 'Search', readOnlyHint: true, openWorldHint: true },
  });
  t.strictSame(m.roles, ['admin', 'analyst']);
  t.equal(m.timeoutMs, 1_000);
  t.ok(m.idempotent);
  t.ok(m.cacheable);
  t.strictSame(m.sensitive, { input: ['apiKey'], output: ['token'] });
  t.strictSame(m.annotations, { title: 'Search', readOnlyHint: true, openWorldHint: true });
});

t.test('defineTool returns the definition itself and refuses a bad one where it is written', async (t) => {
  const def = base();
  t.equal(defineTool(def), def);
  t.throws(() => defineTool({ ...base(), name: 'Bad-Name' }), ToolDefinitionError);
});

t.test('refusals name the tool and the problem', async (t) => {
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['a capitalised name', { name: 'WebSearch' }, /name "WebSearch" must match/],
    ['a name with a dot', { name: 'web.search' }, /name "web.search"/],
    ['a one-letter name', { name: 'w' }, /name "w"/],
    ['no name', { name: undefined }, /name undefined/],
    ['a two-part version', { version: '1.2' }, /version "1.2" must be MAJOR.MINOR.PATCH/],
    ['a pre-release version', { version: '1.0.0-beta' }, /version "1.0.0-beta"/],
    ['an empty description', { description: '' }, /description/],
    [
      'a date in the input',
      { input: z.object({ at: z.date() }) },
      /input schema cannot be expressed as JSON Schema: Date/,
    ],
    [
      'a bigint in the output',
      { output: z.object({ n: z.bigint() }) },
      /output schema cannot be expressed as JSON Schema: BigInt/,
    ],
    [
      'a function in the input',
      { input: z.object({ f: z.function() as unknown as z.ZodType }) },
      /input schema cannot be expressed/,
    ],
    [
      'a custom type',
      { input: z.object({ c: z.custom<string>(() => true) }) },
      /Custom types cannot be represented/,
    ],
    [
      'a transform in the input',
      { input: z.object({ s: z.string().transform((s) => s.length) }) },
      /Transforms cannot be represented/,
    ],
    [
      'a transform in the output',
      { output: z.object({ s: z.string().transform((s) => s.length) }) },
      /output schema cannot be expressed.*Transforms/,
    ],
    ['an input that is not an object', { input: z.string() }, /input schema must be an object schema/],
    [
      'an input that is a union',
      { input: z.union([z.object({ a: z.string() }), z.object({ b: z.string() })]) },
      /input schema must be an object schema/,
    ],
    ['an input that is not zod', { input: { type: 'object' } }, /input must be a zod schema/],
    ['a timeout of 0', { timeoutMs: 0 }, /timeoutMs must be a whole number from 1 to 600000/],
    ['a timeout over 10 minutes', { timeoutMs: 600_001 }, /timeoutMs/],
    ['a fractional timeout', { timeoutMs: 1.5 }, /timeoutMs/],
    ['a bad role', { roles: ['Admin'] }, /roles must be/],
    ['idempotent as a string', { idempotent: 'yes' }, /idempotent must be true or false/],
    [
      'a sensitive input field that does not exist',
      { sensitive: { input: ['password'] } },
      /sensitive.input field "password" is not a top-level key/,
    ],
    ['a nested sensitive field', { sensitive: { input: ['q.inner'] } }, /"q.inner" is not a top-level key/],
    [
      'a sensitive output field that does not exist',
      { sensitive: { output: ['secret'] } },
      /sensitive.output field "secret"/,
    ],
    [
      'sensitive output on a non-object output',
      { output: z.array(z.string()), sensitive: { output: ['x'] } },
      /needs an object output schema/,
    ],
    ['an unknown annotation', { annotations: { dangerous: true } }, /annotations/],
    ['no run', { run: undefined }, /run must be a function/],
  ];
  for (const [what, change, message] of cases) {
    const def: Record<string, unknown> = { ...base(), ...change };
    const e = refusal(def);
    t.type(e, ToolDefinitionError, `${what}: refused`);
    t.match(e?.message ?? '', message, what);
    t.ok(e && e.problems.length >= 1, `${what}: problems listed`);
  }
});

t.test('all problems are reported at once, under the tool name', async (t) => {
  const e = refusal({ ...base(), version: 'v1', timeoutMs: -5, input: z.object({ d: z.date() }) });
  t.match(e?.message, /^tool web_search@v1 cannot be registered/);
  t.equal(e?.problems.length, 3);
  t.equal(e?.tool, 'web_search@v1');
});

t.test('an output of any JSON (z.unknown()) is allowed, but cannot have sensitive fields', async (t) => {
  t.equal(toManifest({ ...base(), output: z.unknown() }).name, 'web_search');
  t.match(
    refusal({ ...base(), output: z.unknown(), sensitive: { output: ['token'] } })?.message,
    /sensitive.output/,
  );
});

t.test('a refined object input is still an object', async (t) => {
  const m = toManifest({
    ...base(),
    input: z.object({ a: z.number(), b: z.number() }).refine((v) => v.a < v.b),
  });
  t.equal(m.inputSchema['type'], 'object');
});

t.test('an approval policy reaches the manifest; a rule on a field the input lacks is refused', async (t) => {
  const approval = {
    approverRoles: ['finance'],
    when: [{ path: 'limit', op: 'gt' as const, value: 100 }],
  };
  const manifest = toManifest({ ...base(), approval });
  t.same(manifest.approval, {
    approverRoles: ['finance'],
    timeoutMs: 15 * 60_000,
    allowSelfApproval: false,
    when: [{ path: 'limit', aggregate: 'any', op: 'gt', value: 100 }],
  });
  t.match(
    refusal({ ...base(), approval: { ...approval, when: [{ path: 'lmit', op: 'gt', value: 1 }] } })?.problems,
    [/approval\.when\.0\.path: "lmit" is not a top-level key/],
  );
  t.match(refusal({ ...base(), approval: { approverRoles: [] } })?.problems, [/approval\.approverRoles/]);
});
