import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { freePort } from '../../test/support/ports.ts';
import type { Checkpoint } from './checkpoint.ts';
import { alterData, openTestStore, recordHistory, runCli, swapEvents, truncateTail } from './testkit.ts';

/**
 * The CLI as an auditor runs it: a child process, its output and its exit code
 * (0 sound, 1 broken, 2 usage, 3 checkpoint refused, 4 unreachable).
 */
t.test('the command line', async (t) => {
  const { url, store, sql } = await openTestStore(t);
  await recordHistory(store, 'alice', 8);
  const dir = await mkdtemp(join(tmpdir(), 'toolbus-audit-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const env = { DATABASE_URL: url, AUDITOR_ID: 'ida' };
  const cli = (...args: string[]) => runCli(args, env);

  t.test('usage errors exit 2', async (t) => {
    const cases = [
      [],
      ['inspect', 'alice'],
      ['verify', 'al.ice'],
      ['replay', 'alice', '--from-revision', 'x'],
      ['replay', 'alice', '--from-revision', '5', '--to-revision', '1'],
      ['verify', 'alice', '--out', 'x.json'],
      ['verify', 'alice', '--checkpoint', join(dir, 'missing.json')],
      ['verify', 'alice', '--frobnicate'],
    ];
    const runs = await Promise.all(cases.map((args) => cli(...args)));
    runs.forEach((run, i) => {
      t.equal(run.code, 2, `${cases[i]!.join(' ') || '(nothing)'}: exit 2`);
      t.match(run.stderr, /error: /);
    });
    const help = await cli('--help');
    t.equal(help.code, 0);
    t.match(help.stdout, /usage:/);
  });

  t.test('replay prints a timeline or NDJSON, whole or by range', async (t) => {
    const timeline = await cli('replay', 'alice');
    t.equal(timeline.code, 0, timeline.stderr);
    const lines = timeline.stdout.trimEnd().split('\n');
    t.equal(lines.length, 23, 'a header and 22 events');
    t.match(
      lines[6],
      /^\s+5\s+2025-03-01T11:00:00.005Z\s+ToolFailed\s+send_mail@1.0.0\s+[0-9a-f-]{36}\s+failed TOOL_ERROR: it failed$/,
    );
    t.match(timeline.stderr, /replayed 22 events/);
    t.notMatch(timeline.stderr, /events\/s/, 'no progress indicator when stderr is not a terminal');

    const ndjson = await cli('replay', 'alice', '--format', 'ndjson', '--from-revision', '20', '--quiet');
    t.equal(ndjson.code, 0);
    t.equal(ndjson.stderr, '', '--quiet prints nothing on stderr');
    t.same(
      ndjson.stdout
        .trimEnd()
        .split('\n')
        .map((l) => (JSON.parse(l) as { revision: number }).revision),
      [20, 21],
    );
    const progress = await cli('replay', 'alice', '--progress');
    t.match(
      progress.stderr,
      /replay user-alice: 0 events, \d+ events\/s, revision -1, heap [\d.]+ MB/,
      '--progress forces it on',
    );
  });

  let checkpointFile = '';
  t.test('verify and checkpoint a sound history: exit 0', async (t) => {
    const verify = await cli('verify', 'alice');
    t.equal(verify.code, 0, verify.stderr);
    t.match(verify.stdout, /^OK user-alice: 22 events \(revisions 0\.\.21\)/);
    const json = await cli('verify', 'alice', '--json');
    t.match(JSON.parse(json.stdout), { ok: true, events: 22, lastRevision: 21 });

    checkpointFile = join(dir, 'alice.json');
    const issued = await cli('checkpoint', 'alice', '--out', checkpointFile);
    t.equal(issued.code, 0, issued.stderr);
    const checkpoint = JSON.parse(await readFile(checkpointFile, 'utf8')) as Checkpoint;
    t.match(checkpoint, { userId: 'alice', revision: 21, issuedBy: 'ida', algorithm: 'HMAC-SHA256' });
    const against = await cli('verify', 'alice', '--checkpoint', checkpointFile);
    t.equal(against.code, 0, against.stderr);
    t.match(against.stdout, /checkpoint at revision 21 matched/);
    const nothing = await cli('verify', 'nobody');
    t.equal(nothing.code, 0, 'an empty history is not broken');
    t.match(nothing.stdout, /^NOTHING TO VERIFY user-nobody: no events/, 'nor is it called OK');
    const empty = await cli('checkpoint', 'nobody');
    t.equal(empty.code, 2, 'nothing to checkpoint for a user without events');
  });

  t.test('a forged checkpoint is refused: exit 3', async (t) => {
    const checkpoint = JSON.parse(await readFile(checkpointFile, 'utf8')) as Checkpoint;
    const forged = join(dir, 'forged.json');
    await writeFile(forged, JSON.stringify({ ...checkpoint, revision: 40, events: 41 }));
    const run = await cli('verify', 'alice', '--checkpoint', forged);
    t.equal(run.code, 3);
    t.match(run.stderr, /checkpoint refused: .*altered or forged/);
    const otherKey = await runCli(['verify', 'alice', '--checkpoint', checkpointFile], {
      DATABASE_URL: url,
      AUDIT_SIGNING_KEY: 'a-different-signing-key-0123456789abcdef',
    });
    t.equal(otherKey.code, 3);
    t.match(otherKey.stderr, /another key/);
    const notJson = join(dir, 'garbage.json');
    await writeFile(notJson, 'not json');
    t.equal(
      (await cli('verify', 'alice', '--checkpoint', notJson)).code,
      2,
      'a file that is not JSON is a usage error',
    );
  });

  t.test('a broken history exits 1 and names the revision', async (t) => {
    await truncateTail(sql, 'alice', 20);
    const cut = await cli('verify', 'alice', '--checkpoint', checkpointFile);
    t.equal(cut.code, 1);
    t.match(cut.stdout, /^BROKEN user-alice at revision 20: \[truncated\]/);

    await swapEvents(sql, 'alice', 12, 15);
    const swapped = await cli('verify', 'alice');
    t.equal(swapped.code, 1);
    t.match(swapped.stdout, /^BROKEN user-alice at revision 12 \(event [0-9a-f-]{36}\): \[link\]/);

    await alterData(sql, 'alice', 3, (d) => (d['tool'] = 'delete_all'));
    const altered = await cli('verify', 'alice', '--json');
    t.equal(altered.code, 1);
    t.match(JSON.parse(altered.stdout), { ok: false, events: 3, break: { revision: 3, kind: 'hash' } });
    const refused = await cli('checkpoint', 'alice', '--out', join(dir, 'never.json'));
    t.equal(refused.code, 1, 'no checkpoint for a broken history');
    await t.rejects(readFile(join(dir, 'never.json')), 'and no file written');
  });

  t.test('an unreachable database exits 4', async (t) => {
    const run = await runCli(['verify', 'alice'], {
      DATABASE_URL: `postgres://postgres@127.0.0.1:${await freePort()}/none`,
    });
    t.equal(run.code, 4);
    t.match(run.stderr, /cannot reach the event store or the audit log/);
  });

  t.test('every run is recorded in audit_log with who ran it', async (t) => {
    const { rows } = await sql.query<{
      actor: string;
      via: string;
      action: string;
      subject_user: string;
      outcome: string;
    }>(`select actor, via, action, subject_user, outcome from audit_log order by id`);
    t.equal(rows[10]!.actor, userInfo().username, 'without AUDITOR_ID, the OS user is the auditor');
    t.same(
      rows.map((r) => [r.action, r.outcome]),
      [
        ['replay', 'ok'],
        ['replay', 'ok'],
        ['replay', 'ok'],
        ['verify', 'ok'],
        ['verify', 'ok'],
        ['checkpoint', 'ok'],
        ['verify', 'ok'],
        ['verify', 'ok'],
        ['checkpoint', 'ok'],
        ['verify', 'refused'],
        ['verify', 'refused'],
        ['verify', 'broken'],
        ['verify', 'broken'],
        ['verify', 'broken'],
        ['checkpoint', 'broken'],
      ],
    );
    t.ok(rows.every((r) => r.via === 'cli' && r.subject_user !== ''));
    t.equal(rows.filter((r) => r.actor === 'ida').length, 14, 'AUDITOR_ID names the auditor');
  });
});
