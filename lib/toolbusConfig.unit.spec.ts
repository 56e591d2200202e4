import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ConfigError } from './config.ts';
import { readToolbusConfig, toolbusConfigFile, toolsFromConfiguration } from './toolbusConfig.ts';

const EXAMPLE = fileURLToPath(new URL('../examples/toolbus.json', import.meta.url));
const DEFINE = fileURLToPath(new URL('./tools/index.ts', import.meta.url));

// Inside the checkout (.scratch/ is git-ignored) so that the modules resolve `zod` as a user's would.
const SCRATCH = fileURLToPath(new URL('../.scratch/', import.meta.url));
await mkdir(SCRATCH, { recursive: true });
const dir = await mkdtemp(join(SCRATCH, 'toolbus-config-'));
t.teardown(() => rm(dir, { recursive: true, force: true }));

/** Writes `files` into the temporary folder and returns the path of the first. */
async function files(entries: Record<string, string>): Promise<string> {
  for (const [name, text] of Object.entries(entries)) await writeFile(join(dir, name), text);
  return join(dir, Object.keys(entries)[0]!);
}

const tool = (name: string) => `
import { z } from 'zod';
import { defineTool } from ${JSON.stringify(DEFINE)};
export const ${name} = defineTool({
  name: '${name}', version: '1.0.0', description: 'test', input: z.object({}), output: z.object({}),
  async run() { return {}; },
});`;

t.test('the docs example loads through its configuration file', async (t) => {
  const tools = await toolsFromConfiguration({ TOOLBUS_CONFIG: EXAMPLE });
  t.strictSame(
    tools.map((d) => `${d.name}@${d.version}`),
    ['word_count@1.0.0'],
  );
});

t.test('a default export may be one tool or an array; paths are relative to the file', async (t) => {
  const config = await files({
    'two.json': JSON.stringify({ tools: ['one.ts', './many.ts'], mcpServers: { any: { shape: 1 } } }),
    'one.ts': `${tool('alpha')}\nexport default alpha;`,
    'many.ts': `${tool('beta')}\n${tool('gamma').replace(/^import.*$/gm, '')}\nexport default [beta, gamma];`,
  });
  t.strictSame(
    (await toolsFromConfiguration({ TOOLBUS_CONFIG: config })).map((d) => d.name),
    ['alpha', 'beta', 'gamma'],
  );
  t.strictSame(
    (await readToolbusConfig(config)).mcpServers,
    { any: { shape: 1 } },
    'mcpServers is passed on',
  );
});

t.test(
  'workerTools are loaded by a worker, not by the dispatcher; a tool in both lists is refused',
  async (t) => {
    const config = await files({
      'split.json': JSON.stringify({ tools: ['in-process.ts'], workerTools: ['on-worker.ts'] }),
      'in-process.ts': `${tool('delta')}\nexport default delta;`,
      'on-worker.ts': `${tool('epsilon')}\nexport default epsilon;`,
    });
    const env = { TOOLBUS_CONFIG: config };
    t.strictSame(
      (await toolsFromConfiguration(env)).map((d) => d.name),
      ['delta'],
      'the dispatcher',
    );
    t.strictSame(
      (await toolsFromConfiguration(env, 'worker')).map((d) => d.name),
      ['delta', 'epsilon'],
      'a worker',
    );
    const twice = await files({
      'twice.json': JSON.stringify({ tools: ['in-process.ts'], workerTools: ['in-process.ts'] }),
    });
    await t.rejects(toolsFromConfiguration({ TOOLBUS_CONFIG: twice }, 'worker'), {
      message: /tool delta@1\.0\.0 is defined twice/,
    });
  },
);

t.test('a bad file is refused with the file and every problem named', async (t) => {
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['not JSON', { 'a.json': '{ tools: ' }, /a\.json: cannot be read as JSON/],
    [
      'a misspelt key',
      { 'b.json': '{"tool": ["x.ts"]}' },
      /b\.json: \(top level\): Unrecognized key: "tool"/,
    ],
    ['tools not a list', { 'c.json': '{"tools": "x.ts"}' }, /c\.json: tools: /],
    ['an empty path', { 'd.json': '{"tools": [""]}' }, /d\.json: tools\.0: must not be empty/],
    ['a missing module', { 'e.json': '{"tools": ["nope.ts"]}' }, /tool module .*nope\.ts does not exist/],
    [
      'two bad modules: both named',
      { 'e2.json': '{"tools": ["gone.ts", "also-gone.ts"]}' },
      /gone\.ts does not exist\n.*also-gone\.ts does not exist/,
    ],
    [
      'no default export',
      { 'f.json': '{"tools": ["named.ts"]}', 'named.ts': tool('delta') },
      /named\.ts has no default export: export default a tool made with defineTool/,
    ],
    [
      'not a tool',
      { 'g.json': '{"tools": ["wrong.ts"]}', 'wrong.ts': 'export default [{ name: "Bad" }];' },
      /wrong\.ts, default export\[0\]: tool Bad@undefined cannot be registered/,
    ],
    [
      'a module that throws',
      { 'h.json': '{"tools": ["throws.ts"]}', 'throws.ts': 'throw new Error("boom");' },
      /throws\.ts failed to load: boom/,
    ],
    [
      'the same tool twice',
      {
        'i.json': '{"tools": ["e1.ts", "e2.ts"]}',
        'e1.ts': `${tool('echoed')}\nexport default echoed;`,
        'e2.ts': `${tool('echoed')}\nexport default echoed;`,
      },
      /tool echoed@1\.0\.0 is defined twice/,
    ],
  ];
  for (const [what, entries, message] of cases) {
    const file = await files(entries);
    const e = await toolsFromConfiguration({ TOOLBUS_CONFIG: file }).catch((e: unknown) => e);
    t.type(e, ConfigError, what);
    t.match((e as Error).message, message, what);
  }
});

t.test('TOOLBUS_CONFIG must name a file that exists', async (t) => {
  t.throws(
    () => toolbusConfigFile({ TOOLBUS_CONFIG: join(dir, 'missing.json') }),
    /TOOLBUS_CONFIG: no such file/,
  );
});
