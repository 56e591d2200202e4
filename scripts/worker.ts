/**
 * `npm run worker`: the example tool worker (services/dispatcher/worker.ts) against the stack that
 * `npm start` runs, as its `worker` identity, with its worker secret (both from .toolbus/). Any
 * NATS_URL, NATS_* credential or WORKER_SECRET in the environment is used instead. Its log lines
 * are shown as `npm start` shows the services' (time, name, level, message).
 *
 * It serves the `workerTools` of the configuration file unless TOOLBUS_WORKER_TOOLS names tools:
 * the stack's dispatcher runs the example tools and the `tools` itself, and refuses a worker that
 * offers them again. With neither, it says so and stops.
 */
import { fileURLToPath } from 'node:url';
import { importToolModule, readToolbusConfig, toolbusConfigFile } from '../lib/toolbusConfig.ts';
import { runAsLocalIdentity } from './localProcess.ts';

if (!process.env['TOOLBUS_WORKER_TOOLS']?.trim()) {
  const names: string[] = [];
  try {
    const file = toolbusConfigFile();
    const config = file === undefined ? undefined : await readToolbusConfig(file);
    for (const path of config?.workerTools ?? []) {
      names.push(...(await importToolModule(path, config!.file)).map((tool) => tool.name));
    }
  } catch (e) {
    console.error((e as Error).message);
    process.exit(2);
  }
  if (names.length === 0) {
    console.error(
      'nothing to serve: toolbus.json lists no workerTools, and TOOLBUS_WORKER_TOOLS names no tool.\n' +
        "The stack's dispatcher runs the example tools and the `tools` of toolbus.json itself (a worker offering\n" +
        'them again is refused). Add a module to `workerTools`, restart `npm start`, then run this again:\n' +
        `  echo '{ "workerTools": ["./examples/wordCount.ts"] }' > toolbus.json\n` +
        'See docs/tools.md, "Your own tools".',
    );
    process.exit(2);
  }
  process.env['TOOLBUS_WORKER_TOOLS'] = [...new Set(names)].join(',');
}

runAsLocalIdentity({
  identity: 'worker',
  entry: fileURLToPath(new URL('../services/dispatcher/worker.ts', import.meta.url)),
  label: 'worker',
});
