import { join } from 'node:path';
import type { Browser } from 'playwright-core';
import t, { type Test } from 'tap';
import { argsHash, executionIdFor } from '../../contracts/index.ts';
import { chromiumMissing, launchChromium, screenshotDir } from '../support/browser.ts';
import { startTestStack } from '../support/stack.ts';

/**
 * The user's live page while a call waits for approval, over the real services (dispatcher and
 * notifier processes): the row says it awaits approval and by whom, then runs and completes once
 * an approver approves it through the dispatcher's HTTP API. A screenshot of the waiting row is
 * kept in .scratch/screenshots/live-page-approval/.
 */
const missing = chromiumMissing();
if (missing) {
  t.fail(missing);
} else {
  t.test('the live page shows a call waiting for approval, then its run', run);
}

async function run(t: Test) {
  const s = await startTestStack(t, {
    services: ['dispatcher', 'notifier'],
    env: { APPROVAL_RECHECK_MS: '200', APPROVAL_RECHECK_MAX_MS: '1000' },
  });
  const browser: Browser = await launchChromium();
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));

  const token = await s.token('lena');
  await page.goto(`${s.url('notifier')}/#token=${token}`);
  await page.waitForSelector('#connection[data-state="live"]', { timeout: 30_000 });

  const args = { text: 'transfer the budget' };
  const requestId = 'live-approval';
  const executionId = executionIdFor('lena', requestId);
  const answer = s.agent.execute('guarded_echo', args, { token, requestId, timeoutMs: 120_000 });
  const row = (status: string) => `tr[data-execution-id="${executionId}"][data-status="${status}"]`;

  await page.waitForSelector(row('awaiting_approval'), { timeout: 60_000 });
  t.match(
    await page.textContent(row('awaiting_approval')),
    /awaits approval \(approver or admin\) until/,
    'the row says it waits, for whom, until when',
  );
  const shot = join(screenshotDir('live-page-approval'), 'awaiting-approval.png');
  await page.screenshot({ path: shot });
  t.comment(`screenshot: ${shot}`);

  const approver = await s.token('moe', ['approver']);
  const res = await fetch(`${s.url('dispatcher')}/executions/${executionId}/approve`, {
    method: 'POST',
    headers: { authorization: `Bearer ${approver}`, 'content-type': 'application/json' },
    body: JSON.stringify({ argsHash: argsHash(args) }),
  });
  t.equal(res.status, 200, 'approved');
  await page.waitForSelector(row('completed'), { timeout: 60_000 });
  t.match(await answer, { status: 'completed' });
  t.same(pageErrors, [], 'no script errors');
}
