import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { stackPostgresPort } from './stackDatabase.ts';

t.test("the stack's PostgreSQL port is the one its socket carries", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'toolbus-socket-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  t.equal(stackPostgresPort(dir, {}), 5433, 'no socket, nothing set: the default');
  t.equal(stackPostgresPort(dir, { TOOLBUS_POSTGRES_PORT: '6000' }), 6000, 'no socket: the variable');
  // A stack started with TOOLBUS_POSTGRES_PORT=9433, the tool run without it (an outside review's case).
  writeFileSync(join(dir, '.s.PGSQL.9433.lock'), '');
  writeFileSync(join(dir, '.s.PGSQL.9433'), '');
  t.equal(stackPostgresPort(dir, {}), 9433);
  t.equal(stackPostgresPort(join(dir, 'gone'), {}), 5433, 'a socket directory that is gone');
});
