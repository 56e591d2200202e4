import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { McpToolbusBlock } from '../../contracts/index.ts';
import { toManifest } from '../../lib/tools/index.ts';
import { ToolbusConfigError } from '../../lib/toolbusConfig.ts';
import { configuredMcpNamespaces, loadMcpServers, parseMcpServers } from './config.ts';
import { contentResult, toolDefinitions, type McpTool } from './tools.ts';

const settings = (over: Record<string, unknown> = {}) => McpToolbusBlock.parse(over);
const never = async () => {
  throw new Error('not called');
};
const echo: McpTool = {
  name: 'echo',
  description: 'Echoes.',
  inputSchema: { type: 'object', properties: { message: { type: 'string' } }, required: ['message'] },
  annotations: { title: 'Echo' },
};

t.test('a server tool becomes a namespaced tool; the server’s hints are not believed', async (t) => {
  const { definitions, refused } = toolDefinitions(
    'everything',
    settings({ roles: ['files'] }),
    [echo],
    never,
  );
  t.same(refused, []);
  const m = toManifest(definitions[0]!);
  t.equal(m.name, 'everything.echo');
  t.equal(m.version, '1.0.0');
  t.same(m.roles, ['files'], 'the server’s roles');
  t.equal(m.idempotent, false, 'not idempotent unless configured');
  t.same(
    m.annotations,
    { title: 'Echo', destructiveHint: true, idempotentHint: false },
    'destructive unless configured',
  );
  t.match(
    m.outputSchema,
    { type: 'object', properties: { text: {}, content: {} } },
    'the documented content shape',
  );
});

t.test('the configuration decides per tool', async (t) => {
  const s = settings({
    tools: { echo: { idempotent: true, destructive: false, roles: ['a', 'b'], timeoutMs: 5000 } },
  });
  const m = toManifest(toolDefinitions('x', s, [echo], never).definitions[0]!);
  t.match(m, {
    idempotent: true,
    roles: ['a', 'b'],
    timeoutMs: 5000,
    annotations: { destructiveHint: false, idempotentHint: true },
  });
});

t.test(
  'a tool that cannot be served is refused naming the server and the tool; the others serve',
  async (t) => {
    const tools: McpTool[] = [
      echo,
      { name: 'bad-schema', inputSchema: { type: 'object', properties: { a: { type: 'bogus' } } } },
      { name: 'bad-ref', inputSchema: { type: 'object', properties: { a: { $ref: '#/nowhere' } } } },
      { name: 'not-object', inputSchema: { type: 'string' } },
      { name: 'bad-output', inputSchema: { type: 'object' }, outputSchema: { type: 'nope' } },
      { name: 'has.dot', inputSchema: { type: 'object' } },
      { name: 'x'.repeat(65), inputSchema: { type: 'object' } },
      { name: 'sp ace', inputSchema: { type: 'object' } },
      { name: '*', inputSchema: { type: 'object' } },
      { ...echo },
    ];
    const { definitions, refused } = toolDefinitions('srv', settings(), tools, never);
    t.same(
      definitions.map((d) => d.name),
      ['srv.echo'],
      'only the good tool serves',
    );
    t.equal(refused.length, tools.length - 1);
    for (const line of refused) t.match(line, /^MCP server "srv" tool ".*" is not served: ./);
    t.match(refused[0], /"bad-schema".*input schema cannot be used: .*bogus/);
    t.match(refused[2], /"not-object".*object schema/);
    t.match(refused[3], /"bad-output".*output schema/);
    t.match(refused[4], /"has.dot".*\[A-Za-z0-9_-\]\{1,64\}/);
    t.match(refused.at(-1), /lists it twice/);
  },
);

t.test('content blocks in the documented shape', async (t) => {
  t.same(
    contentResult([
      { type: 'text', text: 'a' },
      { type: 'image', data: 'AAAA', mimeType: 'image/png' },
      { type: 'text', text: 'b' },
      null,
      'junk',
    ]),
    {
      text: 'a\nb',
      content: [
        { type: 'text', text: 'a' },
        { type: 'image', data: 'AAAA', mimeType: 'image/png' },
        { type: 'text', text: 'b' },
      ],
    },
  );
});

t.test('the mcpServers key of the configuration file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'toolbus-mcp-config-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const load = async (value: unknown) => {
    const file = join(dir, `${randomUUID()}.json`);
    await writeFile(file, typeof value === 'string' ? value : JSON.stringify(value));
    return loadMcpServers({ TOOLBUS_CONFIG: file });
  };
  const { servers } = await load({
    tools: [],
    mcpServers: {
      everything: { command: 'npx', args: ['-y', '@modelcontextprotocol/server-everything'] },
      remote: { url: 'https://mcp.example.com/mcp', toolbus: { lifecycle: 'on-demand', roles: ['ops'] } },
    },
  });
  t.match(servers['everything'], {
    command: 'npx',
    env: {},
    toolbus: { lifecycle: 'keep-running', timeoutMs: 30_000 },
  });
  t.match(servers['remote'], {
    url: 'https://mcp.example.com/mcp',
    toolbus: { lifecycle: 'on-demand', roles: ['ops'] },
  });
  t.same((await load({ tools: [] })).servers, {}, 'no mcpServers: none');
  t.same(
    await configuredMcpNamespaces({ TOOLBUS_CONFIG: join(dir, 'missing.json') }),
    [],
    'no file, no namespace',
  );

  const refusals: Array<[string, unknown, RegExp]> = [
    ['not JSON', '{', /cannot be read as JSON/],
    [
      'a namespace that is no subject token',
      { mcpServers: { 'a.b': { command: 'x' } } },
      /"a\.b": a server's name is its tools' namespace/,
    ],
    ['a wildcard namespace', { mcpServers: { '*': { command: 'x' } } }, /"\*": a server's name/],
    [
      'a typo in the toolbus block',
      { mcpServers: { a: { command: 'x', toolbus: { role: [] } } } },
      /mcpServers\."a"\.toolbus: Unrecognized key: "role"/,
    ],
    [
      'a timeout too long',
      { mcpServers: { a: { command: 'x', toolbus: { timeoutMs: 9_999_999 } } } },
      /mcpServers\."a"\.toolbus\.timeoutMs/,
    ],
    ['a url that is not http', { mcpServers: { a: { url: 'file:///etc/passwd' } } }, /mcpServers\."a"\.url/],
    ['neither command nor url', { mcpServers: { a: { args: [] } } }, /needs a "command".*or a "url"/],
    ['mcpServers a list', { mcpServers: [] }, /mcpServers/],
  ];
  for (const [what, value, problem] of refusals) {
    const error = await load(value).then(
      () => null,
      (e: unknown) => e,
    );
    t.type(error, ToolbusConfigError, what);
    t.match((error as Error | null)?.message, problem, what);
  }
  t.throws(() => parseMcpServers('f.json', 'text'), /f\.json: mcpServers must be an object/);
});
