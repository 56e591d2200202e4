/**
 * The docs' example tool (docs/tools.md, "Your own tools") as a user runs it: named in a
 * configuration file, loaded by the dispatcher process at start, callable by an agent, with its
 * sensitive field redacted in what is stored. A broken configuration stops the dispatcher with
 * the reason, which the launcher (`npm start`) prints.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import type { ToolManifest } from '../contracts/index.ts';
import { userEvents } from '../test/acceptance/support.ts';
import { startTestStack } from '../test/support/stack.ts';

const CONFIG = fileURLToPath(new URL('./toolbus.json', import.meta.url));

t.test('a tool named in the configuration file is served by `npm start`’s dispatcher', async (t) => {
  const s = await startTestStack(t, { services: ['dispatcher'], env: { TOOLBUS_CONFIG: CONFIG } });
  const tools = ((await (await fetch(`${s.url('dispatcher')}/tools`)).json()) as { tools: ToolManifest[] })
    .tools;
  const wordCount = tools.find((m) => m.name === 'word_count');
  t.match(wordCount, { version: '1.0.0', sensitive: { input: ['apiKey'] } }, 'listed with its contract');

  const token = await s.token('words_user');
  const answer = await s.agent.execute('word_count', { text: 'the first hour', apiKey: 'k-123' }, { token });
  t.match(answer, { status: 'completed', result: { words: 3 } });
  const stored = (await userEvents(s.store, 'words_user')).map((e) => e.event);
  t.match(stored[0], { type: 'ToolRequested', data: { args: { apiKey: '[REDACTED]' } } });
  t.notOk(JSON.stringify(stored).includes('k-123'), 'the sensitive argument is not stored');
  const completed = stored.find((e) => e.type === 'ToolCompleted');
  const durationMs = completed?.type === 'ToolCompleted' ? completed.data.durationMs : NaN;
  t.ok(durationMs >= 0, 'a duration is recorded');
  t.equal(
    durationMs,
    Math.round(durationMs * 1000) / 1000,
    `durationMs ${durationMs} is kept to the microsecond`,
  );
});

t.test('a broken configuration stops the dispatcher with its reason', async (t) => {
  const scratch = fileURLToPath(new URL('../.scratch/', import.meta.url));
  await mkdir(scratch, { recursive: true });
  const dir = await mkdtemp(join(scratch, 'broken-config-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'toolbus.json'), JSON.stringify({ tools: ['named.ts'] }));
  await writeFile(join(dir, 'named.ts'), 'export const notDefault = 1;\n');
  const e = (await startTestStack(t, {
    services: ['dispatcher'],
    env: { TOOLBUS_CONFIG: join(dir, 'toolbus.json') },
  }).then(
    () => new Error('the dispatcher started'),
    (e: unknown) => e,
  )) as Error;
  t.match(e.message, /dispatcher exited before it was ready/);
  t.match(e.message, /named\.ts has no default export/, 'the launcher prints the reason');
});
