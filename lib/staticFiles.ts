import { readFile } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';

/** A page's file: served at `path`, read from `file` (a URL) with this content type. */
export interface StaticFile {
  path: string;
  file: URL;
  type: string;
}

export const CONTENT_TYPES = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
} as const;

/**
 * Serves a page's files: a fixed list read once at start, so no request can name another file.
 * Each answer carries the page's Content-Security-Policy, given the request's Host (checked, since
 * it goes into a header) so a policy can name the page's own WebSocket origin.
 */
export async function registerStaticFiles(
  app: FastifyInstance,
  files: readonly StaticFile[],
  csp: (host: string) => string,
): Promise<void> {
  const loaded = await Promise.all(files.map(async (f) => ({ ...f, body: await readFile(f.file) })));
  for (const { path, type, body } of loaded) {
    app.get(path, async (request, reply) => {
      const host = /^[A-Za-z0-9.:[\]-]{1,255}$/.test(request.headers.host ?? '')
        ? request.headers.host!
        : 'localhost';
      return reply
        .header('content-type', type)
        .header('cache-control', 'no-cache')
        .header('x-content-type-options', 'nosniff')
        .header('referrer-policy', 'no-referrer')
        .header('content-security-policy', csp(host))
        .send(body);
    });
  }
  app.get('/favicon.ico', async (_request, reply) => reply.code(204).send());
}
