/**
 * A tool of your own, loaded from the configuration file (examples/toolbus.json; docs/tools.md,
 * "Your own tools"). Outside this repository, import defineTool from '@toolbus/tools'.
 */
import { z } from 'zod';
import { defineTool } from '../lib/tools/index.ts';

export const wordCount = defineTool({
  name: 'word_count', // [a-z][a-z0-9_]{1,63}
  version: '1.0.0', // MAJOR.MINOR.PATCH
  description: 'Counts the words of a text.',
  input: z.object({ text: z.string().max(100_000), apiKey: z.string().optional() }),
  output: z.object({ words: z.number().int() }),
  roles: [], // the caller needs all of these; ['admin'] = admin only
  timeoutMs: 5_000, // default 30 000, at most 600 000
  idempotent: true, // safe to run again after a crash (default false)
  cacheable: true, // results may be cached per user, keyed by the args (default false)
  sensitive: { input: ['apiKey'] }, // top-level fields never stored or logged in clear
  annotations: {
    title: 'Word count',
    readOnlyHint: true,
    destructiveHint: false,
    idempotentHint: true,
    openWorldHint: false,
  },
  async run({ text }, ctx) {
    ctx.progress({ fraction: 0.5, message: 'counting' });
    return { words: text.split(/\s+/).filter(Boolean).length };
  },
});

// What the configuration file loads: one tool, or an array of them.
export default [wordCount];
