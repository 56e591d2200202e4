import t from 'tap';
import { z } from 'zod';
import {
  defineTool,
  toManifest,
  ToolDefinitionError,
  ToolInputError,
  ToolOutputError,
  ToolRegistry,
  ToolRunError,
  type ToolContext,
} from './index.ts';

const tool = (version: string, extra: Partial<Parameters<typeof defineTool>[0]> = {}) =>
  defineTool({
    name: 'adder',
    version,
    description: 'Adds two numbers.',
    input: z.object({ a: z.number(), b: z.number() }),
    output: z.object({ sum: z.number(), version: z.string() }),
    async run({ a, b }: { a: number; b: number }) {
      return { sum: a + b, version };
    },
    ...extra,
  });

function context(
  overrides: Partial<ToolContext> = {},
): ToolContext & { progressed: Array<{ fraction: number; message?: string }> } {
  const progressed: Array<{ fraction: number; message?: string }> = [];
  return {
    signal: new AbortController().signal,
    userId: 'u1',
    roles: ['user'],
    executionId: '00000000-0000-5000-8000-000000000000',
    requestId: 'r1',
    correlationId: 'c1',
    progress: (p) => progressed.push(p),
    progressed,
    ...overrides,
  };
}

const never = async () => {
  throw new Error('a refused tool was called');
};

t.test('register, resolve and run an in-process tool', async (t) => {
  const r = new ToolRegistry();
  const runnable = r.register(tool('1.0.0'));
  t.equal(runnable.source, 'local');
  t.equal(r.resolve('adder', '1.0.0'), runnable);
  t.strictSame(await runnable.run({ a: 2, b: 3 }, context()), { sum: 5, version: '1.0.0' });
  t.equal(r.resolve('missing'), undefined);
  t.equal(r.resolve('adder', '9.9.9'), undefined);
});

t.test('resolve without a version gives the newest in semver order, not string order', async (t) => {
  const r = new ToolRegistry();
  for (const v of ['1.2.0', '1.10.0', '1.9.3', '0.99.99']) r.register(tool(v));
  t.equal(r.resolve('adder')?.manifest.version, '1.10.0');
  t.strictSame(
    r.list().map((m) => m.version),
    ['0.99.99', '1.2.0', '1.9.3', '1.10.0'],
  );
});

t.test('a duplicate name@version is refused, the first stays', async (t) => {
  const r = new ToolRegistry();
  r.register(tool('1.0.0'));
  t.throws(() => r.register(tool('1.0.0', { description: 'Another adder.' })), ToolDefinitionError);
  t.throws(() => r.register(tool('1.0.0')), /adder@1.0.0 is already registered \(local\)/);
  t.equal(r.resolve('adder')?.manifest.description, 'Adds two numbers.');
  t.equal(r.list().length, 1);
});

t.test('a bad definition is refused by register and not listed', async (t) => {
  const r = new ToolRegistry();
  const bad = { ...tool('1.0.0'), name: 'Adder' };
  t.throws(() => r.register(bad), ToolDefinitionError);
  t.throws(() => r.register({ ...tool('1.0.0'), version: '1' }), /MAJOR.MINOR.PATCH/);
  t.throws(
    () => r.register({ ...tool('1.0.0'), input: z.object({ at: z.date() }) }),
    /cannot be expressed as JSON Schema/,
  );
  t.strictSame(r.list(), []);
});

t.test(
  'bad arguments are a ToolInputError (VALIDATION) with zod’s message, and the tool does not run',
  async (t) => {
    const r = new ToolRegistry();
    let ran = false;
    const runnable = r.register(
      tool('1.0.0', {
        async run() {
          ran = true;
          return { sum: 0, version: 'x' };
        },
      }),
    );
    const e = await runnable.run({ a: 'two', b: 3 }, context()).catch((e: unknown) => e);
    t.type(e, ToolInputError);
    t.type(e, ToolRunError);
    t.equal((e as ToolRunError).code, 'VALIDATION');
    t.match((e as Error).message, /expected number, received string/);
    t.match((e as Error).message, /at a/);
    t.strictSame((e as ToolRunError).details, {
      issues: [{ path: 'a', message: 'Invalid input: expected number, received string' }],
    });
    t.notOk(ran);
  },
);

t.test('output that breaks the schema is a ToolOutputError (OUTPUT_INVALID)', async (t) => {
  const r = new ToolRegistry();
  const runnable = r.register(
    tool('1.0.0', {
      async run() {
        return { total: 1 };
      },
    }),
  );
  const e = await runnable.run({ a: 1, b: 1 }, context()).catch((e: unknown) => e);
  t.type(e, ToolOutputError);
  t.equal((e as ToolRunError).code, 'OUTPUT_INVALID');
  t.match((e as Error).message, /adder@1.0.0 returned output that does not match its schema/);
});

t.test('a tool’s own error comes through as it is; a thrown non-error becomes TOOL_ERROR', async (t) => {
  const r = new ToolRegistry();
  const boom = new Error('boom');
  const a = r.register(
    tool('1.0.0', {
      async run() {
        throw boom;
      },
    }),
  );
  t.equal(await a.run({ a: 1, b: 1 }, context()).catch((e: unknown) => e), boom);
  const b = r.register(
    tool('2.0.0', {
      async run() {
        // eslint-disable-next-line @typescript-eslint/only-throw-error
        throw 'a string';
      },
    }),
  );
  const e = await b.run({ a: 1, b: 1 }, context()).catch((e: unknown) => e);
  t.type(e, ToolRunError);
  t.equal((e as ToolRunError).code, 'TOOL_ERROR');
  t.match((e as Error).message, /a string/);
});

t.test('the signal ends run() at once, even for a tool that ignores it', async (t) => {
  const r = new ToolRegistry();
  const runnable = r.register(
    tool('1.0.0', {
      run: () => new Promise(() => undefined),
    }),
  );
  const controller = new AbortController();
  const ctx = context({ signal: controller.signal });
  const pending = runnable.run({ a: 1, b: 1 }, ctx);
  const reason = new Error('cancelled by the user');
  setTimeout(() => controller.abort(reason), 20);
  t.equal(await pending.catch((e: unknown) => e), reason);
  // Already aborted: refused before running.
  t.equal(await runnable.run({ a: 1, b: 1 }, ctx).catch((e: unknown) => e), reason);
});

t.test('progress reaches the context clamped, and stops when the run ends', async (t) => {
  const r = new ToolRegistry();
  let later: ToolContext | undefined;
  const runnable = r.register(
    tool('1.0.0', {
      async run(_args: unknown, ctx: ToolContext) {
        ctx.progress({ fraction: 0.5, message: 'half' });
        ctx.progress({ fraction: 7 });
        ctx.progress({ fraction: Number.NaN, message: 'x'.repeat(600) });
        later = ctx;
        return { sum: 0, version: '1.0.0' };
      },
    }),
  );
  const ctx = context();
  await runnable.run({ a: 0, b: 0 }, ctx);
  later?.progress({ fraction: 0.9 });
  t.equal(ctx.progressed.length, 3);
  t.strictSame(ctx.progressed[0], { fraction: 0.5, message: 'half' });
  t.strictSame(ctx.progressed[1], { fraction: 1 });
  t.equal(ctx.progressed[2]?.fraction, 0);
  t.equal(ctx.progressed[2]?.message?.length, 500);
});

t.test('remote tools: accepted from a worker, validated on both sides, refused on clashes', async (t) => {
  const r = new ToolRegistry();
  const manifest = toManifest(tool('1.0.0'));
  const calls: unknown[] = [];
  const invoke = async (args: unknown) => {
    calls.push(args);
    return { sum: 42, version: 'remote' };
  };
  const remote = r.accept(manifest, 'w1', invoke);
  t.equal(remote.source, 'worker:w1');
  t.strictSame(await remote.run({ a: 40, b: 2 }, context()), { sum: 42, version: 'remote' });
  t.strictSame(calls, [{ a: 40, b: 2 }]);

  // Checked against the announced JSON Schema before anything travels.
  const bad = await remote.run({ a: 'x' }, context()).catch((e: unknown) => e);
  t.type(bad, ToolInputError);
  t.equal(calls.length, 1, 'bad arguments never reach the worker');

  // A reply that breaks the output schema.
  const liar = r.accept(toManifest(tool('2.0.0')), 'w1', async () => ({ nope: true }));
  t.type(await liar.run({ a: 1, b: 1 }, context()).catch((e: unknown) => e), ToolOutputError);

  // The same worker again, and another instance with the same manifest: the same tool.
  t.equal(r.accept(manifest, 'w1', never), remote);
  t.equal(r.accept(manifest, 'w2', never), remote);
  t.strictSame(r.workersOf('adder', '1.0.0'), ['w1', 'w2']);

  // Another worker with a different manifest for the same name@version: refused.
  t.throws(
    () => r.accept({ ...manifest, description: 'Subtracts, really.' }, 'w3', never),
    /already announced by worker w1 with a different manifest/,
  );
  t.equal(r.resolve('adder', '1.0.0')?.manifest.description, 'Adds two numbers.');

  // Malformed manifests are refused with the contract's reasons.
  t.throws(() => r.accept({ ...manifest, name: 'Bad' }, 'w1', never), ToolDefinitionError);
  t.throws(() => r.accept({ ...manifest, timeoutMs: 0 }, 'w1', never), /timeoutMs/);
  t.throws(() => r.accept('not a manifest', 'w1', never), ToolDefinitionError);
  t.throws(
    () =>
      r.accept({ ...manifest, version: '3.0.0', sensitive: { input: ['nope'], output: [] } }, 'w1', never),
    /not a top-level key/,
  );
  t.throws(
    () => r.accept({ ...manifest, version: '3.0.0', inputSchema: { type: 'string' } }, 'w1', never),
    /object schema/,
  );
  t.throws(() => r.accept({ ...manifest, version: '3.0.0' }, 'bad id', never), /worker id/);
  t.equal(r.resolve('adder', '3.0.0'), undefined);
});

t.test('a worker may not shadow an in-process tool, nor the reverse', async (t) => {
  const r = new ToolRegistry();
  r.register(tool('1.0.0'));
  t.throws(() => r.accept(toManifest(tool('1.0.0')), 'w1', never), /already registered in process/);
  t.equal(r.resolve('adder', '1.0.0')?.source, 'local');
  r.accept(toManifest(tool('2.0.0')), 'w1', never);
  t.throws(() => r.register(tool('2.0.0')), /already registered \(worker:w1\)/);
});

t.test('a re-announcement with a changed manifest from the only worker replaces it', async (t) => {
  const r = new ToolRegistry();
  const m = toManifest(tool('1.0.0'));
  r.accept(m, 'w1', never);
  r.accept({ ...m, description: 'Adds, now documented better.' }, 'w1', never);
  t.equal(r.resolve('adder')?.manifest.description, 'Adds, now documented better.');
});

t.test('remove(worker) forgets the tools only that worker served', async (t) => {
  const r = new ToolRegistry();
  r.register(tool('0.1.0'));
  const m1 = toManifest(tool('1.0.0'));
  const m2 = toManifest(tool('2.0.0'));
  r.accept(m1, 'w1', never);
  r.accept(m1, 'w2', never);
  r.accept(m2, 'w1', never);
  r.remove('w1');
  t.strictSame(
    r.list().map((m) => m.version),
    ['0.1.0', '1.0.0'],
  );
  t.equal(r.resolve('adder', '1.0.0')?.source, 'worker:w2');
  r.remove('w2');
  t.strictSame(
    r.list().map((m) => m.version),
    ['0.1.0'],
    'in-process tools are never removed',
  );
  // except: keeps what the worker still announces.
  r.accept(m1, 'w3', never);
  r.accept(m2, 'w3', never);
  r.remove('w3', ['adder@2.0.0']);
  t.strictSame(
    r.list().map((m) => m.version),
    ['0.1.0', '2.0.0'],
  );
});
