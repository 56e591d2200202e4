import t from 'tap';
import {
  ExpectedFailures,
  judge,
  loadExpectedFailures,
  scenarioOfFolder,
  type ScenarioResult,
} from './suite.ts';

const pass = (scenario: string): ScenarioResult => ({
  scenario,
  passed: true,
  failures: [],
  warnings: [],
  succeeded: 1,
});
const fail = (scenario: string): ScenarioResult => ({
  scenario,
  passed: false,
  failures: [`${scenario}: No image content found`],
  warnings: [],
  succeeded: 0,
});
const listed = (scenario: string) => ({ scenario, reason: 'a tools-only server has no prompts' });

t.test('a run with only listed failures is accepted', async (t) => {
  const v = judge([pass('ping'), fail('prompts-list')], [listed('prompts-list')]);
  t.ok(v.ok);
  t.same(v.passed, ['ping']);
  t.same(
    v.expectedFailures.map((e) => e.scenario),
    ['prompts-list'],
  );
});

t.test('a failure that is not listed is refused', async (t) => {
  const v = judge([fail('tools-call-image')], []);
  t.notOk(v.ok);
  t.same(
    v.unexpectedFailures.map((r) => r.scenario),
    ['tools-call-image'],
  );
});

t.test('a listed failure that now passes is refused, so the list stays honest', async (t) => {
  const v = judge([pass('ping')], [listed('ping')]);
  t.notOk(v.ok);
  t.same(
    v.stale.map((e) => e.scenario),
    ['ping'],
  );
});

t.test('a listed scenario the suite does not have is refused (a typo hides nothing)', async (t) => {
  const v = judge([pass('ping')], [listed('pnig')]);
  t.notOk(v.ok);
  t.same(
    v.unknown.map((e) => e.scenario),
    ['pnig'],
  );
});

t.test('result folders are mapped to their scenario, dashes and all', async (t) => {
  t.equal(
    scenarioOfFolder('server-tools-call-with-progress-2026-12-05T04-18-04-171Z'),
    'tools-call-with-progress',
  );
  t.equal(scenarioOfFolder('server-ping-2026-12-05T04-18-04-171Z'), 'ping');
  t.equal(scenarioOfFolder('notes.txt'), undefined);
});

t.test('the list refuses an entry without a reason and a scenario listed twice', async (t) => {
  t.notOk(ExpectedFailures.safeParse([{ scenario: 'ping' }]).success);
  t.notOk(ExpectedFailures.safeParse([listed('ping'), listed('ping')]).success);
});

t.test('the checked-in list of expected failures is well formed', async (t) => {
  const list = await loadExpectedFailures();
  t.ok(list.length > 0);
});
