import t from 'tap';
import type pg from 'pg';
import { userStream, type ToolEvent } from '../../contracts/index.ts';
import type { RecordedEvent } from '../../lib/eventstore/types.ts';
import { toEventData } from '../../lib/toolEvents.ts';
import { executionEvents } from '../auditor/testkit.ts';
import { incomingFromRecorded } from './model.ts';
import { applyBatch, flushRows, SoleWriterRows } from './sql.ts';

/**
 * The rebuild's write-behind (decision 0033), without a database: what it holds, when it writes,
 * and that a failed write stops the flush's other writers. The statements themselves, and the
 * model they build, are tested against PostgreSQL in rebuild.int.spec.ts; here a stand-in records
 * the statements it is sent and fails the ones a test says.
 */
class Statements {
  sent = 0;
  running = 0;
  rows = 0;
  constructor(private readonly fails: (n: number) => boolean = () => false) {}
  async query(_sql: string, params: string[] = []): Promise<{ rows: never[] }> {
    const n = ++this.sent;
    this.running++;
    try {
      await new Promise((resolve) => setImmediate(resolve));
      if (this.fails(n)) throw new Error(`statement ${n} refused`);
      for (const p of params) if (p.startsWith('[')) this.rows += (JSON.parse(p) as unknown[]).length;
      return { rows: [] };
    } finally {
      this.running--;
    }
  }
}

function stored(executions: number): RecordedEvent[] {
  const events: ToolEvent[] = [];
  for (let i = 0; i < executions; i++) {
    const chained = executionEvents(`u${i % 5}`, i, i * 10, 0);
    events.push(...chained);
  }
  return events.map((e, revision) => ({
    ...toEventData(e),
    streamId: userStream(e.metadata.userId),
    revision,
    position: { commit: 1n, prepare: BigInt(revision) },
    created: new Date(),
  }));
}

t.test('the rows a rebuild touches are held, and written once each by the flush', async (t) => {
  const db = new Statements();
  const known = new SoleWriterRows();
  await applyBatch(db as unknown as pg.ClientBase, 'build', stored(40).map(incomingFromRecorded), known);
  t.equal(db.sent, 0, 'a batch under the capacity writes nothing');
  const written = await flushRows(db as unknown as pg.Pool, 'build', known, 3, 7);
  // 40 executions, 5 users, one tool by minute and in total.
  t.ok(written >= 40 + 5 + 2, `the flush writes every row held (${written})`);
  t.equal(db.rows, written, 'each once');
  t.equal(await flushRows(db as unknown as pg.Pool, 'build', known, 3, 7), 0, 'and nothing twice');
});

t.test('a flush whose writer fails stops the others before answering', async (t) => {
  const db = new Statements((n) => n === 1);
  const known = new SoleWriterRows();
  await applyBatch(db as unknown as pg.ClientBase, 'build', stored(60).map(incomingFromRecorded), known);
  await t.rejects(flushRows(db as unknown as pg.Pool, 'build', known, 3, 5), /statement 1 refused/);
  t.equal(db.running, 0, 'no statement is still running once the flush has failed');
  t.ok(db.sent <= 3, `no writer took more rows after the failure (${db.sent} statements sent)`);
});
