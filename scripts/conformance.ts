/**
 * `npm run test:mcp-conformance`: the official MCP conformance suite against Toolbus's MCP gateway.
 *
 * Starts a stack of its own (a NATS and a Redis server on free ports, a fresh PostgreSQL database,
 * the dispatcher and the gateway in its test mode, a worker serving the suite's tools), runs every
 * server scenario with Node 22, and compares with test/mcp-conformance/expected-failures.json.
 * Exits 1 when a scenario fails that is not listed, or a listed one passes (remove it then).
 * Needs what the tests need: PostgreSQL at TEST_DATABASE_URL (default
 * postgres://postgres@127.0.0.1:5432/test), nats-server and redis-server on the PATH.
 * docs/mcp-conformance.md says more.
 */
import { startConformanceStack } from '../test/mcp-conformance/stack.ts';
import {
  describeVerdict,
  judge,
  loadExpectedFailures,
  runConformanceSuite,
} from '../test/mcp-conformance/suite.ts';

const teardowns: Array<() => Promise<void> | void> = [];
let exitCode = 1;
try {
  const expected = await loadExpectedFailures();
  const { mcpUrl } = await startConformanceStack({ teardown: (fn) => teardowns.push(fn) });
  console.log(`running the MCP conformance suite against ${mcpUrl}`);
  const { results, output } = await runConformanceSuite(mcpUrl);
  if (process.argv.includes('--verbose')) console.log(output);
  for (const r of results) {
    console.log(`${r.passed ? 'pass' : 'FAIL'} ${r.scenario}${r.passed ? '' : `: ${r.failures.join('; ')}`}`);
    for (const w of r.warnings) console.log(`     warning ${w}`);
  }
  const sum = (count: (r: (typeof results)[number]) => number) => results.reduce((n, r) => n + count(r), 0);
  console.log(
    `${results.length} scenarios; checks: ${sum((r) => r.succeeded)} passed, ${sum((r) => r.failures.length)} failed`,
  );
  const verdict = judge(results, expected);
  console.log(describeVerdict(verdict));
  exitCode = verdict.ok ? 0 : 1;
} catch (e) {
  console.error(e instanceof Error ? (e.stack ?? e.message) : e);
} finally {
  for (const fn of teardowns.reverse()) {
    try {
      await fn();
    } catch (e) {
      console.error('teardown:', e instanceof Error ? e.message : e);
    }
  }
}
process.exit(exitCode);
