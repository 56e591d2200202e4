import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { signToken } from '../../lib/auth.ts';
import { keyIdOf, signCheckpoint, type Checkpoint } from '../../services/auditor/checkpoint.ts';
import { loadAuditorServerConfig } from '../../services/auditor/config.ts';
import { buildAuditor } from '../../services/auditor/server.ts';
import {
  openTestStore,
  recordHistory,
  runCli,
  SIGNING_KEY,
  truncateTail,
} from '../../services/auditor/testkit.ts';
import { verifyHistory } from '../../services/auditor/verify.ts';

/**
 * The attack: the audit signing key used to default to a constant written in the repository, so
 * whoever could delete the tail of a user's history could also sign a checkpoint at the cut, and
 * the auditor's `verify --checkpoint` said OK. Now the key is the operator's own (no default), a
 * checkpoint names its key (`keyId`), and one signed under another key is refused, naming it.
 */

// The default Toolbus had before issue 15, as published in the repository.
const OLD_AUDIT_KEY = 'toolbus-development-audit-key-do-not-use-in-production';

t.test('a checkpoint signed with another key over a truncated history is refused', async (t) => {
  const { url, store, sql } = await openTestStore(t);
  await recordHistory(store, 'alice', 8);
  const dir = await mkdtemp(join(tmpdir(), 'toolbus-forged-checkpoint-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // The CLI runs with the test kit's random SIGNING_KEY, as an operator's own key.
  const cli = (...args: string[]) => runCli(args, { DATABASE_URL: url, AUDITOR_ID: 'ida' });

  const legitimateFile = join(dir, 'legitimate.json');
  const issued = await cli('checkpoint', 'alice', '--out', legitimateFile);
  t.equal(issued.code, 0, issued.stderr);
  const legitimate = JSON.parse(await readFile(legitimateFile, 'utf8')) as Checkpoint;
  t.equal(legitimate.keyId, keyIdOf(SIGNING_KEY), 'the checkpoint names the key it was signed with');
  const before = await cli('verify', 'alice', '--checkpoint', legitimateFile);
  t.equal(before.code, 0, 'the legitimate checkpoint verifies');
  t.match(before.stdout, /checkpoint at revision \d+ matched/);

  // The attacker cuts the history and signs a checkpoint that fits the cut.
  await truncateTail(sql, 'alice', 10);
  const cut = await verifyHistory(store, 'alice');
  t.ok(cut.ok, 'without a checkpoint the shortened history looks sound: that is what checkpoints are for');
  const body = {
    userId: 'alice',
    stream: cut.stream,
    revision: cut.lastRevision,
    eventId: cut.lastEventId!,
    hash: cut.lastHash,
    events: cut.events,
    issuedAt: new Date().toISOString(),
    issuedBy: 'ida',
  };
  const forged = signCheckpoint(body, OLD_AUDIT_KEY);
  const forgedFile = join(dir, 'forged.json');
  await writeFile(forgedFile, JSON.stringify(forged));
  const refused = await cli('verify', 'alice', '--checkpoint', forgedFile);
  t.equal(refused.code, 3, 'exit 3: checkpoint refused');
  t.match(
    refused.stderr,
    `checkpoint refused: the checkpoint was signed with another key (key id ${keyIdOf(OLD_AUDIT_KEY)}`,
    'the refusal names the key id of the checkpoint',
  );
  t.notMatch(refused.stdout, /^OK/m, 'never reported sound');

  // Relabelled with our key id, the signature gives it away.
  const relabelledFile = join(dir, 'relabelled.json');
  await writeFile(relabelledFile, JSON.stringify({ ...forged, keyId: keyIdOf(SIGNING_KEY) }));
  const relabelled = await cli('verify', 'alice', '--checkpoint', relabelledFile);
  t.equal(relabelled.code, 3);
  t.match(relabelled.stderr, /checkpoint refused: .*altered or forged/);

  const after = await cli('verify', 'alice', '--checkpoint', legitimateFile);
  t.equal(after.code, 1, 'the legitimate checkpoint finds the cut');
  t.match(after.stdout, /^BROKEN user-alice at revision 10: \[truncated\]/);

  t.test('the same over HTTP', async (t) => {
    const jwtSecret = randomBytes(32).toString('hex');
    const auditor = await buildAuditor(
      loadAuditorServerConfig({
        DATABASE_URL: url,
        JWT_SECRET: jwtSecret,
        AUDIT_SIGNING_KEY: SIGNING_KEY,
        LOG_LEVEL: 'silent',
      }),
    );
    t.teardown(() => auditor.close());
    const headers = {
      authorization: `Bearer ${await signToken(jwtSecret, { sub: 'ida', roles: ['auditor'] })}`,
    };
    const verify = (checkpoint: unknown) =>
      auditor.app.inject({
        method: 'POST',
        url: '/audit/users/alice/verify',
        headers,
        payload: { checkpoint },
      });
    const forgedAnswer = await verify(forged);
    t.equal(forgedAnswer.statusCode, 422);
    t.match(forgedAnswer.json(), {
      error: { code: 'CHECKPOINT_REFUSED', message: new RegExp(`key id ${keyIdOf(OLD_AUDIT_KEY)}`) },
    });
    const legitimateAnswer = await verify(legitimate);
    t.equal(legitimateAnswer.statusCode, 200);
    t.match(
      legitimateAnswer.json(),
      { ok: false, break: { kind: 'truncated' } },
      'and the legitimate one finds the cut',
    );
  });
});
