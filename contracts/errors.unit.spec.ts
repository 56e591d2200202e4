import { readFileSync } from 'node:fs';
import t from 'tap';
import {
  ALL_CODES,
  ERROR_CATALOGUE,
  ErrorCode,
  errorTableMarkdown,
  RefusalCode,
  ServiceErrorCode,
} from './errors.ts';

t.test('every code has a catalogue entry with an HTTP status', async (t) => {
  for (const code of [...ErrorCode.options, ...RefusalCode.options, ...ServiceErrorCode.options]) {
    const entry = ERROR_CATALOGUE[code];
    t.ok(entry, `${code} has an entry`);
    t.ok(entry.status >= 400 && entry.status < 600, `${code}: an error status (${entry?.status})`);
    t.ok(entry.description.length > 0, `${code}: described`);
  }
  t.equal(new Set(ALL_CODES).size, Object.keys(ERROR_CATALOGUE).length, 'no entry without a code');
});

t.test('what may be retried', async (t) => {
  t.equal(ERROR_CATALOGUE.OVERLOADED.retryable, true);
  t.equal(ERROR_CATALOGUE.RATE_LIMITED.retryable, true);
  t.equal(ERROR_CATALOGUE.TOOL_ERROR.retryable, false, "a recorded execution's answer never changes");
  t.equal(ERROR_CATALOGUE.UNAUTHENTICATED.recorded, false);
});

t.test("docs/dispatcher.md's errors table is the catalogue", async (t) => {
  const doc = readFileSync(new URL('../docs/dispatcher.md', import.meta.url), 'utf8');
  // Prettier may pad columns differently: compare cell by cell.
  const cells = (table: string) =>
    table
      .split('\n')
      .filter((l) => l.startsWith('|') && !/^\|[\s|-]+\|$/.test(l))
      .map((l) =>
        l
          .split('|')
          .map((c) => c.trim())
          .filter(Boolean)
          .join(' | '),
      );
  const expected = cells(errorTableMarkdown());
  const docRows = new Set(cells(doc));
  const missing = expected.filter((row) => !docRows.has(row));
  t.strictSame(missing, [], 'every row is in the doc (regenerate: npx tsx scripts/error-table.ts)');
});
