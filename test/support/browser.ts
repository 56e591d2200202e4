import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser } from 'playwright-core';

/** Headless Chromium for the browser tests (the system's, as CI installs it). */
export const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';

export const chromiumMissing = (): string | null =>
  existsSync(CHROMIUM)
    ? null
    : `Chromium is not installed at ${CHROMIUM}: install it (apt-get install -y chromium) or set CHROMIUM_PATH`;

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** Where a browser test keeps its screenshots: `.scratch/screenshots/<name>/` (git-ignored), made empty-or-existing. */
export function screenshotDir(name: string): string {
  const dir = join(fileURLToPath(new URL('../../.scratch/screenshots/', import.meta.url)), name);
  mkdirSync(dir, { recursive: true });
  return dir;
}
