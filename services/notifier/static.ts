import { readFile } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';

/** The live page: a fixed list of files read once at start, so no request can name another file. */
const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/toolbus-client.js': { file: 'toolbus-client.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

const PUBLIC_DIR = new URL('./public/', import.meta.url);

export async function registerLivePage(app: FastifyInstance): Promise<void> {
  const loaded = await Promise.all(
    Object.entries(FILES).map(async ([path, { file, type }]) => ({
      path,
      type,
      body: await readFile(new URL(file, PUBLIC_DIR)),
    })),
  );
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
        .header(
          'content-security-policy',
          // The page talks only to the notifier that served it (fetch for tickets, ws for events).
          `default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; ` +
            `connect-src 'self' ws://${host} wss://${host}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
        )
        .send(body);
    });
  }
  app.get('/favicon.ico', async (_request, reply) => reply.code(204).send());
}
