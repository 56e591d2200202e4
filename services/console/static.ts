import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { CONTENT_TYPES, registerStaticFiles, type StaticFile } from '../../lib/staticFiles.ts';

const PUBLIC_DIR = new URL('./public/', import.meta.url);
const PAGE_FILES = [
  'app.js',
  'api.js',
  'dom.js',
  'session.js',
  'views/executions.js',
  'views/execution.js',
  'views/approvals.js',
  'views/metrics.js',
  'views/audit.js',
  'style.css',
];

/** uPlot as its package ships it (decision 0024): an ES module and its stylesheet, no build step. */
const uplot = (file: string): URL =>
  pathToFileURL(createRequire(import.meta.url).resolve(`uplot/dist/${file}`));

export const CONSOLE_FILES: readonly StaticFile[] = [
  { path: '/', file: new URL('index.html', PUBLIC_DIR), type: CONTENT_TYPES.html },
  ...PAGE_FILES.map((f) => ({
    path: `/${f}`,
    file: new URL(f, PUBLIC_DIR),
    type: f.endsWith('.css') ? CONTENT_TYPES.css : CONTENT_TYPES.js,
  })),
  { path: '/vendor/uPlot.esm.js', file: uplot('uPlot.esm.js'), type: CONTENT_TYPES.js },
  { path: '/vendor/uPlot.min.css', file: uplot('uPlot.min.css'), type: CONTENT_TYPES.css },
];

/** The console's page: it talks only to the console that served it (the /api calls). */
export async function registerConsolePage(app: FastifyInstance): Promise<void> {
  await registerStaticFiles(
    app,
    CONSOLE_FILES,
    () =>
      `default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; ` +
      `connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
  );
}
