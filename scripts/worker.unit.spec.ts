import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';

/** `npm run worker`: it serves the `workerTools`, or says why there is nothing to serve. */
const script = fileURLToPath(new URL('./worker.ts', import.meta.url));
const wordCount = fileURLToPath(new URL('../examples/wordCount.ts', import.meta.url));

const run = async (env: Record<string, string>): Promise<{ code: number; err: string }> => {
  try {
    const { stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', script], {
      env: { PATH: process.env['PATH'] ?? '', ...env },
    });
    return { code: 0, err: stderr };
  } catch (e) {
    const x = e as { code: number; stderr: string };
    return { code: x.code, err: x.stderr };
  }
};

t.test('without workerTools and without TOOLBUS_WORKER_TOOLS it says what to do, and stops', async (t) => {
  const dir = t.testdir();
  const config = join(dir, 'toolbus.json');
  await writeFile(config, JSON.stringify({ tools: [] }));
  const { code, err } = await run({ TOOLBUS_CONFIG: config, TOOLBUS_DIR: dir });
  t.equal(code, 2);
  t.match(err, /nothing to serve: toolbus\.json lists no workerTools/);
  t.match(err, /workerTools/);
});

t.test('with workerTools it goes on to serve them (here: stops at the missing identity)', async (t) => {
  const dir = t.testdir();
  const config = join(dir, 'toolbus.json');
  await writeFile(config, JSON.stringify({ workerTools: [wordCount] }));
  const { code, err } = await run({ TOOLBUS_CONFIG: config, TOOLBUS_DIR: dir });
  t.equal(code, 2);
  t.notMatch(err, /nothing to serve/);
  t.match(err, /no \.toolbus\/nats\/worker\.nk: run `npm start` once first/);
});
