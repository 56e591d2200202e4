import type { NatsConnection } from '../../lib/nats.ts';

/**
 * Dispatchers answer "are you still running execution X?" on a subject of their own. A dispatcher
 * that finds an execution left in ToolExecuting by another (after a redelivery) asks its runner
 * first: only when the runner is gone (no responder, no answer in time, or not running it) is the
 * execution taken over (re-run or INTERRUPTED). This keeps a slow but live dispatcher, whose ack
 * deadline passed, from having its execution interrupted under it.
 */
const RUNNER_ID = /^[A-Za-z0-9_-]{1,100}$/;
export const runnerSubject = (dispatcherId: string): string => `toolbus.dispatchers.${dispatcherId}.inflight`;

export function serveLiveness(
  nc: NatsConnection,
  dispatcherId: string,
  isRunning: (executionId: string) => boolean,
): { stop(): void } {
  const sub = nc.subscribe(runnerSubject(dispatcherId), {
    callback: (err, msg) => {
      if (err) return;
      const executionId = msg.string();
      msg.respond(JSON.stringify({ running: isRunning(executionId) }));
    },
  });
  return { stop: () => sub.unsubscribe() };
}

export async function probeRunner(
  nc: NatsConnection,
  runner: string,
  executionId: string,
  timeoutMs: number,
): Promise<'running' | 'gone'> {
  if (!RUNNER_ID.test(runner)) return 'gone';
  try {
    const reply = await nc.request(runnerSubject(runner), executionId, { timeout: timeoutMs });
    return reply.json<{ running?: unknown }>().running === true ? 'running' : 'gone';
  } catch {
    // no responders (the runner is gone) or no answer in time (stopped, partitioned): take over
    return 'gone';
  }
}
