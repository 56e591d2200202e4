import { arch, cpus, hostname, loadavg, platform } from 'node:os';
import { z } from 'zod';
import { defineTool } from '../../../lib/tools/index.ts';

/**
 * Admin only: reports the process that runs it (the dispatcher for an in-process tool, a tool
 * worker when served remotely): host name, pid, Node version, uptime, memory and load. Reads
 * only; it exposes host details, which is why it needs the `admin` role.
 */
export const adminRuntimeInfo = defineTool({
  name: 'admin_runtime_info',
  version: '1.0.0',
  description:
    'Admin only. Reports the process that runs the tool (dispatcher or tool worker): host, pid, Node.js version, ' +
    'uptime, memory use and load average.',
  input: z.object({}),
  output: z.object({
    hostname: z.string(),
    pid: z.number().int(),
    node: z.string(),
    platform: z.string(),
    arch: z.string(),
    cpus: z.number().int(),
    uptimeSeconds: z.number(),
    memory: z.object({ rssBytes: z.number(), heapUsedBytes: z.number(), heapTotalBytes: z.number() }),
    loadAverage: z.array(z.number()).length(3),
    requestedBy: z.string(),
  }),
  roles: ['admin'],
  timeoutMs: 5_000,
  idempotent: true,
  cacheable: false,
  // It reads its own process only: no effect on anything, the same call again changes nothing.
  annotations: {
    title: 'Runtime information (admin)',
    readOnlyHint: true,
    destructiveHint: false,
    idempotentHint: true,
    openWorldHint: false,
  },
  async run(_args, ctx) {
    const mem = process.memoryUsage();
    const [l1 = 0, l5 = 0, l15 = 0] = loadavg();
    return {
      hostname: hostname(),
      pid: process.pid,
      node: process.version,
      platform: platform(),
      arch: arch(),
      cpus: cpus().length,
      uptimeSeconds: Math.round(process.uptime() * 10) / 10,
      memory: { rssBytes: mem.rss, heapUsedBytes: mem.heapUsed, heapTotalBytes: mem.heapTotal },
      loadAverage: [l1, l5, l15],
      requestedBy: ctx.userId,
    };
  },
});
