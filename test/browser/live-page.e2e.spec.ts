import { randomUUID } from 'node:crypto';
import type { Browser, Page } from 'playwright-core';
import t from 'tap';
import {
  chainEvents,
  eventIdFor,
  executionIdFor,
  notificationName,
  subjects,
  userStream,
  type Notification,
  type ToolEvent,
} from '../../contracts/index.ts';
import { signToken } from '../../lib/auth.ts';
import { loadConfig } from '../../lib/config.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { connectNats, type NatsConnection } from '../../lib/nats.ts';
import { toEventData } from '../../lib/toolEvents.ts';
import { startNotifier, type Notifier } from '../../services/notifier/app.ts';
import { NotifierEnv } from '../../services/notifier/config.ts';
import { recordExecution, streamTail } from '../support/events.ts';
import { freePort } from '../support/ports.ts';
import { chromiumMissing, launchChromium } from '../support/browser.ts';
import { createTestDatabase } from '../support/postgres.ts';
import { startNats, startRedis } from '../support/processes.ts';

/**
 * The live page in headless Chromium: a user's executions appear as they happen, complete, fail,
 * and keep coming after the notifier restarts (the page reconnects and resumes on its own).
 */
const SECRET = 'browser-test-secret-that-is-long-enough-012345678';

const missing = chromiumMissing();
if (missing) {
  t.fail(missing);
} else {
  await run();
}

async function run() {
  const db = await createTestDatabase(t);
  const nats = await startNats(t);
  const redis = await startRedis(t);
  const store = await createPostgresEventStore({ connectionString: db.url });
  const publisher = await connectNats(nats.url, 'browser-test');
  const config = loadConfig(NotifierEnv, {
    NODE_ENV: 'test',
    LOG_LEVEL: 'warn',
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    JWT_SECRET: SECRET,
    NOTIFIER_PORT: String(await freePort()),
  });
  let notifier: Notifier = await startNotifier(config, { store });
  const browser: Browser = await launchChromium();
  t.teardown(async () => {
    await browser.close();
    await notifier.close();
    await publisher.close();
    await store.close();
  });

  const userId = `u${randomUUID().slice(0, 8)}`;
  const token = await signToken(SECRET, { sub: userId }, '1h');
  const page: Page = await browser.newPage();
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  const row = (executionId: string, status?: string) =>
    `tr[data-execution-id="${executionId}"]${status ? `[data-status="${status}"]` : ''}`;

  await t.test(
    'the page connects with a token from the fragment and shows an execution as it runs',
    async (t) => {
      await page.goto(`${notifier.address}/#token=${token}`);
      await page.waitForSelector('#connection[data-state="live"]', { timeout: 20_000 });
      t.equal(await page.evaluate(() => location.hash), '', 'the token is no longer in the address bar');
      t.equal(await page.textContent('#user'), userId);

      const requestId = randomUUID();
      const { executionId } = await recordExecution(store, userId, {
        nats: publisher,
        requestId,
        tool: 'weather',
        outcome: 'executing',
      });
      await page.waitForSelector(row(executionId, 'executing'), { timeout: 20_000 });
      t.match(await page.textContent(row(executionId)), /weather 1\.0\.0/);

      await complete(store, publisher, userId, requestId, 42);
      await page.waitForSelector(row(executionId, 'completed'), { timeout: 20_000 });
      const text = await page.textContent(row(executionId));
      t.match(text, /completed/);
      t.match(text, /42 ms/, 'the duration is shown');
      t.equal(await page.locator('svg#latency rect').count(), 1, 'the latency chart has its bar');
    },
  );

  await t.test('a timeout shows as timed out, with its error', async (t) => {
    const { executionId } = await recordExecution(store, userId, {
      nats: publisher,
      tool: 'slowpoke',
      outcome: 'failed',
      code: 'TIMEOUT',
      durationMs: 1500,
    });
    await page.waitForSelector(row(executionId, 'timed_out'), { timeout: 20_000 });
    const text = await page.textContent(row(executionId));
    t.match(text, /slowpoke/);
    t.match(text, /timed out/);
    t.match(text, /TIMEOUT: it failed/);
    t.match(text, /1\.50 s/);
    t.equal(await page.locator('svg#latency rect.failed').count(), 1);
  });

  await t.test(
    'after a notifier restart the page reconnects and resumes without gaps or repeats',
    async (t) => {
      await notifier.close();
      await page.waitForSelector('#connection[data-state="reconnecting"]', { timeout: 20_000 });
      // Written while no notifier runs: only the resume can bring it.
      const missed = await recordExecution(store, userId, { tool: 'while_down', durationMs: 7 });
      notifier = await startNotifier(config, { store });
      await page.waitForSelector(row(missed.executionId, 'completed'), { timeout: 30_000 });
      await page.waitForSelector('#connection[data-state="live"]', { timeout: 20_000 });

      const after = await recordExecution(store, userId, { nats: publisher, tool: 'after_restart' });
      await page.waitForSelector(row(after.executionId, 'completed'), { timeout: 20_000 });
      t.equal(await page.locator('#executions tbody tr').count(), 4, 'each execution once');
      t.equal(
        await page.textContent('#revision'),
        String((await streamTail(store, userId)).revision),
        'at the stream tail',
      );
      t.match(await page.textContent('#counts'), /0 running, 3 completed, 1 failed/);
      t.same(pageErrors, [], 'no script errors');
    },
  );

  await t.test('a cancelled run shows as cancelled, not failed', async (t) => {
    const { executionId } = await recordExecution(store, userId, {
      nats: publisher,
      tool: 'wait_for_cancel',
      outcome: 'failed',
      code: 'CANCELLED',
      durationMs: 2400,
    });
    await page.waitForSelector(row(executionId, 'cancelled'), { timeout: 20_000 });
    const status = await page.textContent(`${row(executionId)} .status`);
    t.equal(status, 'cancelled');
    t.match(await page.textContent('#counts'), /0 running, 3 completed, 1 failed, 1 cancelled/);
    t.equal(await page.locator('svg#latency rect.cancelled').count(), 1, 'its bar is not a failure’s');
  });

  await t.test('on a 375 px phone nothing overflows, and times carry their date', async (t) => {
    await recordExecution(store, userId, {
      nats: publisher,
      tool: 'a_tool_with_a_rather_long_name_that_does_not_break',
      outcome: 'failed',
      durationMs: 31_000,
    });
    await page.setViewportSize({ width: 375, height: 800 });
    await page.waitForFunction(() => document.querySelectorAll('#executions tbody tr').length === 6);
    const widths = await page.evaluate(() => ({
      page: document.documentElement.scrollWidth,
      viewport: window.innerWidth,
      rightmost: Math.max(
        ...Array.from(document.querySelectorAll('#executions td'), (td) => td.getBoundingClientRect().right),
      ),
    }));
    t.ok(
      widths.page <= widths.viewport,
      `no sideways scroll (page ${widths.page} px, screen ${widths.viewport} px)`,
    );
    t.ok(widths.rightmost <= widths.viewport, `every cell fits (rightmost edge ${widths.rightmost} px)`);
    const started = await page.locator('#executions td.started').first().textContent();
    t.match(started, new RegExp(String(new Date().getFullYear())), `the time has its date: ${started}`);
    t.same(pageErrors, [], 'no script errors');
  });

  await t.test('a #token= link works in the open tab; a token that is not one says so', async (t) => {
    await page.evaluate(() => (location.hash = '#token=not-a-jwt'));
    await page.waitForSelector('#connection[data-state="stopped"]', { timeout: 20_000 });
    t.match(await page.textContent('#connection'), /not a user token/);
    t.equal(await page.evaluate(() => location.hash), '', 'the bad token is not left in the address bar');

    const other = `u${randomUUID().slice(0, 8)}`;
    await page.evaluate(
      (token) => (location.hash = `#token=${token}`),
      await signToken(SECRET, { sub: other }, '1h'),
    );
    await page.waitForSelector('#connection[data-state="live"]', { timeout: 20_000 });
    t.equal(await page.textContent('#user'), other, 'the open tab now watches the linked user');
    t.same(pageErrors, [], 'no script errors');
  });
}

/** Appends the terminal `ToolCompleted` of a running execution and publishes it as the dispatcher does. */
async function complete(
  store: EventStore,
  nc: NatsConnection,
  userId: string,
  requestId: string,
  durationMs: number,
) {
  const executionId = executionIdFor(userId, requestId);
  const tail = await streamTail(store, userId);
  const [event] = chainEvents<ToolEvent>(
    [
      {
        id: eventIdFor(executionId, 'terminal'),
        type: 'ToolCompleted',
        schemaVersion: 1,
        data: { result: { ok: true }, redacted: [], durationMs, cached: false },
        metadata: {
          userId,
          executionId,
          requestId,
          correlationId: executionId,
          causationId: eventIdFor(executionId, 'executing:1'),
          occurredAt: new Date().toISOString(),
          prevHash: tail.hash,
        },
      },
    ] as never,
    tail.hash,
  );
  const result = await store.append(userStream(userId), [toEventData(event!)], tail.revision);
  const n: Notification = {
    kind: 'event',
    name: notificationName(event!.type),
    userId,
    revision: result.nextRevision,
    event: event!,
  };
  nc.publish(subjects.events(userId), JSON.stringify(n));
}
