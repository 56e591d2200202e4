import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { defineTool } from '../../../lib/tools/index.ts';

/**
 * Two tools that show, in the default stack, what the short example tools cannot: progress that
 * moves on the live page, and a run that is still going when its user cancels it. Both wait on
 * their signal, so a cancel or a timeout stops them at once.
 */

const hints = {
  readOnlyHint: true,
  destructiveHint: false,
  idempotentHint: true,
  openWorldHint: false,
} as const;

export const countdown = defineTool({
  name: 'countdown',
  version: '1.0.0',
  description:
    'Counts down `seconds` (1..300, default 20), reporting progress every second, then returns how long it counted. ' +
    'Stops at once when cancelled.',
  input: z.object({ seconds: z.number().int().min(1).max(300).default(20) }),
  output: z.object({ counted: z.number().int() }),
  timeoutMs: 330_000,
  idempotent: true,
  annotations: { title: 'Countdown', ...hints },
  async run({ seconds }, ctx) {
    for (let done = 1; done <= seconds; done++) {
      await sleep(1_000, undefined, { signal: ctx.signal });
      ctx.progress({ fraction: done / seconds, message: `${seconds - done} s left` });
    }
    return { counted: seconds };
  },
});

export const waitForCancel = defineTool({
  name: 'wait_for_cancel',
  version: '1.0.0',
  description:
    'Waits until it is cancelled, or `seconds` (1..590, default 300) have passed, then returns how long it waited. ' +
    'For trying cancellation.',
  input: z.object({ seconds: z.number().int().min(1).max(590).default(300) }),
  output: z.object({ waited: z.number().int() }),
  timeoutMs: 600_000,
  idempotent: true,
  annotations: { title: 'Wait for cancel', ...hints },
  async run({ seconds }, ctx) {
    await sleep(seconds * 1_000, undefined, { signal: ctx.signal });
    return { waited: seconds };
  },
});
