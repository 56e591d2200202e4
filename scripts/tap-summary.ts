// Reads tap's TAP output (a file or stdin) and prints one line: "N passed, N failed, N skipped".
// Counts each file's top-level tests; a file that fails without a failing test (a crash, a
// timeout) counts as one failure, so a broken file can never look green.
import { readFileSync } from 'node:fs';

const text = readFileSync(process.argv[2] ?? 0, 'utf8');
let passed = 0;
let failed = 0;
let skipped = 0;
let fileFailures = 0;
for (const line of text.split('\n')) {
  const inner = /^ {4}(not )?ok \d+ .*?(# (SKIP|TODO)\b)?/.exec(line);
  if (inner) {
    if (inner[3]) skipped++;
    else if (inner[1]) {
      failed++;
      fileFailures++;
    } else passed++;
    continue;
  }
  const file = /^(not )?ok \d+ - (\S+)/.exec(line);
  if (file) {
    if (file[1] && fileFailures === 0) failed++;
    fileFailures = 0;
  }
}
if (passed + failed + skipped === 0) failed = 1;
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exitCode = failed > 0 ? 1 : 0;
