import type { FastifyInstance } from 'fastify';
import { CONTENT_TYPES, registerStaticFiles } from '../../lib/staticFiles.ts';

const PUBLIC_DIR = new URL('./public/', import.meta.url);

/** The live page. */
export async function registerLivePage(app: FastifyInstance): Promise<void> {
  await registerStaticFiles(
    app,
    [
      { path: '/', file: new URL('index.html', PUBLIC_DIR), type: CONTENT_TYPES.html },
      { path: '/app.js', file: new URL('app.js', PUBLIC_DIR), type: CONTENT_TYPES.js },
      { path: '/toolbus-client.js', file: new URL('toolbus-client.js', PUBLIC_DIR), type: CONTENT_TYPES.js },
      { path: '/style.css', file: new URL('style.css', PUBLIC_DIR), type: CONTENT_TYPES.css },
    ],
    // The page talks only to the notifier that served it (fetch for tickets, ws for events).
    (host) =>
      `default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; ` +
      `connect-src 'self' ws://${host} wss://${host}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
  );
}
