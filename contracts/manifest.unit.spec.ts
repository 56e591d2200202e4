import t from 'tap';
import { z } from 'zod';
import { MAX_TIMEOUT_MS, ToolAnnouncement, ToolManifest } from './manifest.ts';

const good = () => ({
  name: 'web_search',
  version: '1.2.3',
  description: 'Searches the web.',
  inputSchema: z.toJSONSchema(z.object({ q: z.string(), limit: z.number().int().optional() })) as Record<
    string,
    unknown
  >,
  outputSchema: { type: 'array', items: { type: 'string' } } as Record<string, unknown>,
  roles: ['user'],
  timeoutMs: 30_000,
  idempotent: true,
  cacheable: false,
});

t.test('a good manifest is accepted, with defaults filled in', async (t) => {
  const parsed = ToolManifest.safeParse(good());
  t.ok(parsed.success);
  t.strictSame(parsed.data, { ...good(), sensitive: { input: [], output: [] } });
  const full = {
    ...good(),
    sensitive: { input: ['apiKey'], output: [] },
    annotations: { title: 'Search', readOnlyHint: true, openWorldHint: true },
    roles: [],
  };
  t.strictSame(ToolManifest.parse(full), full);
});

t.test('JSON Schema documents in the shapes tools use are accepted', async (t) => {
  for (const schema of [
    { type: 'object' },
    { type: ['string', 'null'] },
    { anyOf: [{ type: 'string' }, { type: 'number' }] },
    { oneOf: [{ type: 'string' }] },
    { $ref: '#/$defs/x', $defs: { x: { type: 'string' } } },
    { allOf: [{ type: 'object' }, { required: ['a'] }] },
    z.toJSONSchema(z.string()),
  ]) {
    t.ok(ToolManifest.safeParse({ ...good(), outputSchema: schema }).success, JSON.stringify(schema));
  }
});

t.test('whatever z.toJSONSchema gives for a zod schema is accepted', async (t) => {
  const schemas: Record<string, z.ZodType> = {
    'z.string().nullable()': z.string().nullable(),
    'z.union([z.string(), z.number()])': z.union([z.string(), z.number()]),
    'z.unknown()': z.unknown(),
    'z.any()': z.any(),
    'z.json()': z.json(),
    'z.discriminatedUnion': z.discriminatedUnion('k', [
      z.object({ k: z.literal('a') }),
      z.object({ k: z.literal('b') }),
    ]),
    'z.object': z.object({ a: z.string().optional(), b: z.array(z.number()) }),
    'z.enum': z.enum(['a', 'b']),
    'z.tuple': z.tuple([z.string(), z.number()]),
  };
  for (const [what, schema] of Object.entries(schemas)) {
    const doc = z.toJSONSchema(schema) as Record<string, unknown>;
    t.ok(ToolManifest.safeParse({ ...good(), inputSchema: doc, outputSchema: doc }).success, what);
  }
});

t.test('refusals', async (t) => {
  const cases: Array<[string, Record<string, unknown>]> = [
    ['a capitalised name', { name: 'WebSearch' }],
    ['a one-letter name', { name: 'w' }],
    ['a name with a dash', { name: 'web-search' }],
    ['a name with two dots (a namespace has one level)', { name: 'web.search.deep' }],
    ['a namespaced name with an empty part', { name: 'web.' }],
    ['a name with a wildcard', { name: 'web*' }],
    ['a name starting with a digit', { name: '1tool' }],
    ['a name of 65 characters', { name: 'a'.repeat(65) }],
    ['a two-part version', { version: '1.2' }],
    ['a version with a prefix', { version: 'v1.2.3' }],
    ['a pre-release version', { version: '1.2.3-beta' }],
    ['a version with a leading zero', { version: '01.2.3' }],
    ['a timeout of 0', { timeoutMs: 0 }],
    ['a negative timeout', { timeoutMs: -1 }],
    ['a timeout over the maximum', { timeoutMs: MAX_TIMEOUT_MS + 1 }],
    ['a fractional timeout', { timeoutMs: 1.5 }],
    ['an empty input schema', { inputSchema: {} }],
    ['an input schema without a type', { inputSchema: { properties: { q: {} } } }],
    ['an input schema that is a string', { inputSchema: 'object' }],
    ['an input schema that is an array', { inputSchema: [{ type: 'string' }] }],
    ['an empty list of types', { inputSchema: { type: [] } }],
    ['a list of types that are not names', { inputSchema: { type: [1, 2] } }],
    ['a type that is not a name', { inputSchema: { type: 7 } }],
    ['a zod schema instead of JSON Schema', { outputSchema: z.string() }],
    ['no output schema', { outputSchema: undefined }],
    ['an empty description', { description: '' }],
    ['a description of 1001 characters', { description: 'd'.repeat(1001) }],
    ['a bad role', { roles: ['Admin'] }],
    ['17 roles', { roles: Array.from({ length: 17 }, (_, i) => `r${i}`) }],
    ['idempotent as a string', { idempotent: 'yes' }],
    ['no cacheable', { cacheable: undefined }],
    ['an unknown key', { permissions: ['net'] }],
    ['an unknown annotation', { annotations: { dangerous: true } }],
    ['an unknown sensitive key', { sensitive: { input: [], args: [] } }],
  ];
  for (const [what, change] of cases) {
    const m: Record<string, unknown> = { ...good(), ...change };
    for (const k of Object.keys(change)) if (change[k] === undefined) delete m[k];
    t.notOk(ToolManifest.safeParse(m).success, what);
  }
  t.ok(
    ToolManifest.safeParse({ ...good(), timeoutMs: MAX_TIMEOUT_MS }).success,
    'the maximum timeout itself',
  );
  t.ok(ToolManifest.safeParse({ ...good(), timeoutMs: 1 }).success, '1 ms');
  t.equal(MAX_TIMEOUT_MS, 600_000);
  for (const v of [null, 'manifest', 42, []])
    t.notOk(ToolManifest.safeParse(v).success, `non-object ${JSON.stringify(v)}`);
});

t.test('ToolAnnouncement', async (t) => {
  const a = {
    workerId: 'worker-1',
    manifests: [good()],
    issuedAt: 1_700_000_000_000,
    signature: 'ab'.repeat(32),
  };
  t.ok(ToolAnnouncement.safeParse(a).success);
  t.ok(
    ToolAnnouncement.safeParse({ ...a, manifests: [] }).success,
    'no manifests: the worker withdraws the tool',
  );
  t.notOk(ToolAnnouncement.safeParse({ ...a, signature: 'AB'.repeat(32) }).success, 'uppercase signature');
  t.notOk(ToolAnnouncement.safeParse({ ...a, workerId: 'has space' }).success, 'bad worker id');
  t.notOk(ToolAnnouncement.safeParse({ ...a, extra: 1 }).success, 'unknown key');
});
