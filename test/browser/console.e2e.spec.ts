import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Browser, Page } from 'playwright-core';
import t from 'tap';
import { z } from 'zod';
import { executionIdFor } from '../../contracts/index.ts';
import { defineTool, serveTools } from '../../lib/tools/index.ts';
import { chromiumMissing, launchChromium, screenshotDir } from '../support/browser.ts';
import { startTestStack, STACK_WORKER_SECRET } from '../support/stack.ts';
import { newUserId, waitUntil } from '../acceptance/support.ts';

/**
 * The operator console in headless Chromium against the whole stack (each service its own
 * process): an operator signs in with a token, filters the executions, opens one's timeline,
 * cancels a running one, approves a waiting call and sees it complete, denies another, sees the
 * tool charts and a user's audit verification; and every view fits a 375 px wide screen.
 * Screenshots go to .scratch/screenshots/console/ (printed at the end).
 */
/** A tool on a worker that runs until cancelled (a long timeout, so only the cancel ends it). */
const hold = defineTool({
  name: 'console_hold',
  version: '1.0.0',
  description: 'Test tool: waits `ms` unless cancelled.',
  input: z.object({ ms: z.number().int().min(0).max(600_000) }),
  output: z.object({ waited: z.number() }),
  timeoutMs: 600_000,
  idempotent: true,
  run: async ({ ms }, ctx) => {
    await sleep(ms, undefined, { signal: ctx.signal });
    return { waited: ms };
  },
});

async function run() {
  const s = await startTestStack(t, {
    services: ['dispatcher', 'projector', 'auditor', 'console'],
    workerTools: [hold.name],
  });
  const worker = await serveTools(await s.connectAs('worker'), [hold], {
    workerId: 'console-test',
    secret: STACK_WORKER_SECRET,
  });
  t.teardown(() => worker.stop());
  const dispatcher = s.url('dispatcher');
  await waitUntil('the worker tool is listed', async () =>
    ((await (await fetch(`${dispatcher}/tools`)).json()) as { tools: { name: string }[] }).tools.some(
      (m) => m.name === hold.name,
    ),
  );
  const hasApprovals = (await fetch(`${dispatcher}/approvals`)).status !== 404;

  const alice = newUserId('alice');
  const bob = newUserId('bob');
  const aliceToken = await s.token(alice);
  const bobToken = await s.token(bob);
  const operatorToken = await s.token('olga', ['operator', 'approver', 'auditor']);
  const execute = (token: string, tool: string, args: Record<string, unknown>, requestId?: string) =>
    s.agent.execute(tool, args as never, { token, timeoutMs: 120_000, ...(requestId ? { requestId } : {}) });

  // Some history: two users, a completed and a failed call each.
  for (const token of [aliceToken, bobToken]) {
    await execute(token, 'echo', { text: 'hello' });
    await execute(token, 'fail', { message: 'broken on purpose' });
  }

  const browser: Browser = await launchChromium();
  t.teardown(() => browser.close());
  const page: Page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  const shots = screenshotDir('console');
  const shot = (name: string) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  const consoleUrl = s.url('console');
  const row = (id: string, status?: string) =>
    `#executions tr[data-execution-id="${id}"]${status ? `[data-status="${status}"]` : ''}`;

  await t.test('an operator signs in with a token from the address, which then leaves it', async (t) => {
    await page.goto(`${consoleUrl}/#token=${operatorToken}`);
    await page.waitForSelector('#who:not([hidden])');
    t.equal(await page.textContent('#user'), 'olga');
    t.match(await page.textContent('#roles'), /operator, approver, auditor/);
    t.equal(await page.evaluate(() => location.hash), '#/executions', 'no token in the address bar');
    await page.waitForSelector('#executions tbody tr[data-execution-id]');
  });

  await t.test('the list shows every user; filtering by user and status, with the keyboard', async (t) => {
    await waitUntil('both users listed', async () => {
      const users = await page.$$eval('#executions tbody tr', (rows) =>
        rows.map((r) => r.getAttribute('data-user')),
      );
      return users.includes(alice) && users.includes(bob);
    });
    await page.focus('#f-user');
    await page.keyboard.type(bob);
    await page.selectOption('#f-status', 'failed');
    await page.keyboard.press('Enter'); // submits the filter form from its field
    await page.waitForFunction((user) => {
      const rows = Array.from(document.querySelectorAll('#executions tbody tr[data-execution-id]'));
      return (
        rows.length === 1 &&
        rows[0]?.getAttribute('data-user') === user &&
        rows[0]?.getAttribute('data-status') === 'failed'
      );
    }, bob);
    t.match(
      page.url(),
      new RegExp(`userId=${bob}&status=failed`),
      'the filter is in the address (a link to share)',
    );
    t.match(await page.textContent('#executions tbody'), /TOOL_ERROR: broken on purpose/);
    await shot('01-filtered');
  });

  await t.test('paging: older and newer pages, only the first one live', async (t) => {
    const ids = () =>
      page.$$eval('#executions tbody tr[data-execution-id]', (rows) =>
        rows.map((r) => r.getAttribute('data-execution-id')),
      );
    await page.goto(`${consoleUrl}/#/executions?limit=2`);
    await page.waitForFunction(
      () => document.querySelectorAll('#executions tbody tr[data-execution-id]').length === 2,
    );
    const first = await ids();
    t.match(await page.textContent('#live'), /live/);
    await page.click('#next-page');
    await page.waitForSelector('#live:text("not live")');
    await page.waitForFunction((before) => {
      const now = Array.from(document.querySelectorAll('#executions tbody tr[data-execution-id]')).map((r) =>
        r.getAttribute('data-execution-id'),
      );
      return now.length === 2 && !now.some((id) => before.includes(id));
    }, first);
    const second = await ids();
    t.equal(second.length, 2, 'a second page of two, none of the first');
    await page.click('#prev-page');
    await page.waitForFunction(
      (before) =>
        Array.from(document.querySelectorAll('#executions tbody tr[data-execution-id]'))
          .map((r) => r.getAttribute('data-execution-id'))
          .join() === before.join(),
      first,
    );
    t.ok(await page.isDisabled('#prev-page'), 'back on the first page');
  });

  await t.test("an execution's page: its timeline, arguments and result", async (t) => {
    await page.click(`#executions tbody tr[data-user="${bob}"] a`);
    await page.waitForSelector('#timeline li[data-type="ToolFailed"]');
    t.same(await page.$$eval('#timeline li', (items) => items.map((i) => i.getAttribute('data-type'))), [
      'ToolRequested',
      'ToolExecuting',
      'ToolFailed',
    ]);
    t.match(await page.textContent('#arguments'), /"message": "broken on purpose"/);
    t.match(await page.textContent('#outcome'), /TOOL_ERROR: broken on purpose/);
    t.equal(await page.textContent('#execution-status'), 'failed');
    t.ok(await page.isHidden('#cancel'), 'no cancel for an ended execution');
    t.ok(await page.isHidden('#decide'), 'nothing to approve');
    t.ok(await page.isHidden('#login'), 'no sign-in form while signed in');
    await shot('02-timeline');
  });

  await t.test('a new execution appears on the open list by itself; cancelling it', async (t) => {
    await page.goto(`${consoleUrl}/#/executions`);
    await page.waitForSelector('#executions tbody tr[data-execution-id]');
    // Started while the list is open: only the list's own refresh can show it.
    const requestId = 'held-1';
    const answer = execute(aliceToken, hold.name, { ms: 600_000 }, requestId);
    answer.catch(() => undefined);
    const executionId = executionIdFor(alice, requestId);
    await page.waitForSelector(row(executionId, 'executing'), { timeout: 60_000 });
    await page.click(`${row(executionId)} a`);
    await page.waitForSelector('#cancel:not([hidden])');
    await shot('03-running');
    await page.click('#cancel');
    await page.waitForSelector('#execution-status:text("cancelled")', { timeout: 60_000 });
    // The page's own refresh may show the end before the cancel's answer comes back.
    await page.waitForSelector('#status:text("Cancelled.")');
    t.match(await page.textContent('#outcome'), /CANCELLED/);
    t.match(await page.textContent('#timeline li[data-type="ToolCancelRequested"]'), /by olga/);
    t.match(await answer, { status: 'failed', error: { code: 'CANCELLED' } }, 'the agent got its answer');
    await shot('04-cancelled');

    // The status filter selects it as `cancelled`, apart from the other failures.
    await page.goto(`${consoleUrl}/#/executions`);
    await page.selectOption('#f-status', 'cancelled');
    await page.click('#filters button[type="submit"]');
    await page.waitForFunction((id) => {
      const rows = Array.from(document.querySelectorAll('#executions tbody tr[data-execution-id]'));
      return rows.length === 1 && rows[0]?.getAttribute('data-execution-id') === id;
    }, executionId);
    t.match(page.url(), /status=cancelled/, 'the filter is in the address as chosen');
    t.equal(await page.textContent(`${row(executionId)} .status`), 'cancelled');
  });

  await t.test(
    'approving a waiting call, then denying one',
    { skip: !hasApprovals && 'the dispatcher has no approvals API in this branch' },
    async (t) => {
      await page.click('#nav a[data-section="approvals"]');
      await page.waitForSelector('#approvals-empty:not([hidden])');
      // Asked for while the queue is open: they appear by themselves.
      const approved = execute(aliceToken, 'guarded_echo', { text: 'pay 10' }, 'wait-approve');
      const denied = execute(bobToken, 'guarded_echo', { text: 'pay 1000' }, 'wait-deny');
      approved.catch(() => undefined);
      denied.catch(() => undefined);
      const approveId = executionIdFor(alice, 'wait-approve');
      const denyId = executionIdFor(bob, 'wait-deny');
      const card = (id: string) => `#approvals li[data-execution-id="${id}"]`;
      await page.waitForSelector(card(approveId), { timeout: 60_000 });
      await page.waitForSelector(card(denyId), { timeout: 60_000 });
      t.match(await page.textContent(card(approveId)), /"text": "pay 10"/, 'the arguments to decide on');
      await page.waitForSelector('#approvals-count:text("2")');
      await shot('05-approvals');

      await page.click(`${card(approveId)} button.approve`);
      await page.waitForSelector(card(approveId), { state: 'detached' });
      t.match(await approved, { status: 'completed' }, 'the approved call ran');

      await page.click(`${card(denyId)} button.deny`);
      t.match(await page.textContent('#status'), /needs a reason/, 'a denial without a reason is stopped');
      await page.fill(`${card(denyId)} input[name="reason"]`, 'too much');
      await page.click(`${card(denyId)} button.deny`);
      await page.waitForSelector(card(denyId), { state: 'detached' });
      t.match(await denied, { status: 'failed', error: { code: 'DENIED' } });
      await page.waitForSelector('#approvals-empty:not([hidden])');

      await page.goto(`${consoleUrl}/#/executions/${approveId}?user=${alice}`);
      await page.waitForSelector('#timeline li[data-type="ToolCompleted"]', { timeout: 60_000 });
      t.match(await page.textContent('#decision'), /approved by olga \(approver\)/, 'who approved');
      await page.goto(`${consoleUrl}/#/executions/${denyId}?user=${bob}`);
      await page.waitForSelector('#timeline li[data-type="ToolDenied"]', { timeout: 60_000 });
      t.match(await page.textContent('#decision'), /denied by olga \(approver\): too much/);
      await shot('06-denied');
    },
  );

  await t.test('tool charts: throughput, latency percentiles and error rate per tool (uPlot)', async (t) => {
    await page.goto(`${consoleUrl}/#/metrics`);
    await page.waitForSelector('#charts section[data-tool="fail"] .uplot', { timeout: 60_000 });
    for (const tool of ['echo', 'fail']) {
      t.equal(
        await page.locator(`#charts section[data-tool="${tool}"] .uplot canvas`).count(),
        3,
        `${tool}: three charts`,
      );
    }
    t.match(await page.textContent('#tool-totals tr[data-tool="fail"]'), /100\.0 %/, "fail's error rate");
    t.match(await page.textContent('#tool-totals tr[data-tool="echo"]'), /0\.0 %/);
    await shot('07-metrics');
  });

  await t.test("a user's audit verification", async (t) => {
    await page.goto(`${consoleUrl}/#/audit`);
    await page.fill('#audit-user', alice);
    await page.click('#audit button[type="submit"]');
    await page.waitForSelector('#audit-result .report[data-ok="true"]', { timeout: 60_000 });
    t.match(await page.textContent('#audit-result'), new RegExp(`${alice}'s history verifies`));
    await shot('08-audit');
    // A user with no events (a mistyped id, most often) is not shown as a history that verifies.
    await page.fill('#audit-user', 'no-such-user');
    await page.click('#audit button[type="submit"]');
    await page.waitForFunction(
      () => document.querySelector('#audit-result .verdict')?.textContent?.includes('no-such-user'),
      undefined,
      { timeout: 60_000 },
    );
    t.match(await page.textContent('#audit-result'), /Nothing to verify: no-such-user has no events/);
  });

  await t.test('at 375 px wide nothing overflows sideways', async (t) => {
    await page.setViewportSize({ width: 375, height: 800 });
    const views = {
      executions: '#/executions',
      execution: `#/executions/${executionIdFor(alice, 'held-1')}?user=${alice}`,
      approvals: '#/approvals',
      metrics: '#/metrics',
      audit: '#/audit',
    };
    for (const [name, view] of Object.entries(views)) {
      await page.goto(`${consoleUrl}/${view}`);
      await page.waitForSelector('#view > *');
      await page.waitForLoadState('networkidle');
      const width = await page.evaluate(() => document.documentElement.scrollWidth);
      t.ok(width <= 375, `${view}: page ${width} px wide`);
      await shot(`09-phone-${name}`);
    }
    await page.setViewportSize({ width: 1200, height: 900 });
  });

  await t.test('every control is labelled, and a plain user is refused what is not theirs', async (t) => {
    await page.goto(`${consoleUrl}/#/executions`);
    await page.waitForSelector('#filters');
    const unlabelled = await page.$$eval('input, select', (els) =>
      els
        .filter((e) => !(e as HTMLInputElement).hidden && (e as HTMLInputElement).labels?.length === 0)
        .map((e) => e.id),
    );
    t.same(unlabelled, [], 'each input has a label');
    // The keyboard reaches the section links, and the focused one is outlined.
    await page.focus('#sign-out');
    await page.keyboard.press('Tab'); // the first section link
    t.equal(await page.evaluate(() => document.activeElement?.textContent?.trim()), 'Executions');
    t.not(
      await page.evaluate(() => getComputedStyle(document.activeElement!).outlineStyle),
      'none',
      'focus is visible',
    );
    await page.keyboard.press('Enter');

    const plain = await browser.newPage();
    await plain.goto(`${consoleUrl}/#token=${aliceToken}`);
    await plain.waitForSelector('#executions tbody tr[data-execution-id]');
    const users = await plain.$$eval('#executions tbody tr', (rows) => [
      ...new Set(rows.map((r) => r.getAttribute('data-user'))),
    ]);
    t.same(users, [alice], 'a plain user sees only their own executions');
    await plain.fill('#f-user', bob);
    await plain.press('#f-user', 'Enter');
    await plain.waitForSelector('#status[data-kind="error"]');
    t.match(await plain.textContent('#status'), /FORBIDDEN/);
    await plain.goto(`${consoleUrl}/#/audit`);
    await plain.fill('#audit-user', bob);
    await plain.click('#audit button[type="submit"]');
    await plain.waitForSelector('#status[data-kind="error"]');
    t.match(await plain.textContent('#status'), /FORBIDDEN/, 'the auditor refuses a plain user');
    await plain.close();
  });

  t.same(pageErrors, [], 'no script errors');
  t.comment(`screenshots: ${shots}`);
}

const missing = chromiumMissing();
if (missing) t.fail(missing);
else await run();
