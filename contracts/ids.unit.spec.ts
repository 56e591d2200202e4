import t from 'tap';
import { z } from 'zod';
import {
  assertToolNamespace,
  toolNamespaceOf,
  isInboxOf,
  parseRequestSubject,
  assertUserId,
  deterministicUuid,
  eventIdFor,
  executionIdFor,
  InvalidUserIdError,
  isUserId,
  subjects,
  UserId,
  userIdOfStream,
  userStream,
} from './ids.ts';

const BAD_USER_IDS: unknown[] = [
  '',
  'a'.repeat(65),
  '.',
  '*',
  '>',
  'a b',
  ' alice',
  'alice\n',
  'élodie',
  'ユーザー',
  'a\u0000b',
  'a.b',
  '../x',
  'a/b',
  'a*',
  'alice.>',
  42,
  null,
  undefined,
  {},
  ['alice'],
];
const GOOD_USER_IDS = ['a', 'alice', 'Alice_01', 'user-with-dashes', '0', '_', '-', 'a'.repeat(64)];

const show = (v: unknown): string =>
  typeof v === 'string' ? JSON.stringify(v) : String(JSON.stringify(v) ?? v);

const NAMERS: Record<string, (id: string) => string> = {
  userStream,
  'subjects.request': (id) => subjects.request(id, 'agent-1'),
  'subjects.events': subjects.events,
  'subjects.progress': subjects.progress,
  'subjects.cancel': (id) => subjects.cancel(id, 'agent-1'),
  'subjects.answers': (id) => subjects.answers(id, 'agent-1'),
  executionIdFor: (id) => executionIdFor(id, 'req-1'),
};

t.test('every name built from a user id refuses an id outside [A-Za-z0-9_-]{1,64}', async (t) => {
  for (const [name, fn] of Object.entries(NAMERS)) {
    for (const bad of BAD_USER_IDS) {
      t.throws(() => fn(bad as string), InvalidUserIdError, `${name}(${show(bad)}) is refused`);
    }
  }
  for (const bad of BAD_USER_IDS) {
    t.notOk(isUserId(bad), `isUserId(${show(bad)}) is false`);
    t.notOk(UserId.safeParse(bad).success, `UserId schema refuses ${show(bad)}`);
    t.throws(() => assertUserId(bad), { name: 'InvalidUserIdError', code: 'INVALID_USER_ID' });
  }
});

t.test('the refusal message shows the offending id, cut short', async (t) => {
  t.throws(() => userStream('a.b'), { message: /invalid user id "a\.b"/ });
  const long = 'x'.repeat(500);
  try {
    userStream(long);
    t.fail('should throw');
  } catch (e) {
    t.ok((e as Error).message.length < 200, 'a huge id does not make a huge message');
  }
});

t.test('good user ids give the expected names', async (t) => {
  for (const id of GOOD_USER_IDS) {
    t.ok(isUserId(id), id);
    t.equal(assertUserId(id), id);
  }
  t.equal(userStream('alice'), 'user-alice');
  t.equal(subjects.request('alice', 'agent-1'), 'toolbus.requests.alice.agent-1');
  t.same(parseRequestSubject('toolbus.requests.alice.agent-1'), { userId: 'alice', agentId: 'agent-1' });
  t.equal(parseRequestSubject('toolbus.requests.alice'), null, 'a request subject names its agent');
  t.ok(isInboxOf('agent-1', '_INBOX.agent-1.abc'));
  t.notOk(isInboxOf('agent-1', '_INBOX.agent-2.abc'), "another identity's inbox");
  t.notOk(isInboxOf('agent-1', '_INBOX.agent-1'), 'the prefix itself is no inbox');
  t.notOk(isInboxOf('agent-1', 'toolbus.requests.alice'), 'any other subject');
  for (const bad of ['', '.', '*', '>', 'a.b', 'x'.repeat(65)]) {
    t.throws(
      () => subjects.request('alice', bad),
      /invalid NATS identity id/,
      `agent id ${JSON.stringify(bad)} is refused`,
    );
  }
  t.equal(subjects.events('alice'), 'events.user.alice');
  t.equal(subjects.progress('alice'), 'toolbus.progress.alice');
  t.equal(subjects.cancel('alice', 'agent-1'), 'toolbus.cancel.alice.agent-1');
  t.equal(subjects.answers('alice', 'agent-1'), 'toolbus.answers.alice.agent-1');
  // each per-user subject is one token below its wildcard, so the wildcards cover them
  t.equal(subjects.requestsAll, 'toolbus.requests.>');
  t.equal(subjects.eventsAll, 'events.user.*');
  t.equal(subjects.progressAll, 'toolbus.progress.*');
  t.equal(subjects.cancelAll, 'toolbus.cancel.*.*', 'user and asking identity');
  t.equal(subjects.answersAll, 'toolbus.answers.*.*', 'user and asking identity');
});

t.test('userIdOfStream', async (t) => {
  t.equal(userIdOfStream('user-alice'), 'alice');
  t.equal(userIdOfStream('user-user-x'), 'user-x', 'only the prefix is removed');
  t.equal(userIdOfStream(userStream('A_b-9')), 'A_b-9', 'inverse of userStream');
  t.equal(userIdOfStream('user-'), undefined, 'empty id');
  t.equal(userIdOfStream('alice'), undefined, 'no prefix');
  t.equal(userIdOfStream('users-alice'), undefined, 'other prefix');
  t.equal(userIdOfStream('$user-alice'), undefined);
  t.equal(userIdOfStream('user-a.b'), undefined, 'invalid id after the prefix');
  t.equal(userIdOfStream(`user-${'a'.repeat(65)}`), undefined, 'too long');
  t.equal(userIdOfStream('$et-ToolRequested'), undefined, 'system streams are no user streams');
});

const V5 = /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

t.test('deterministicUuid', async (t) => {
  const inputs = [[''], ['a'], ['a', 'b'], ['ab'], ['a', 'bc'], ['ab', 'c'], ['execution', 'alice', 'r1']];
  const seen = new Set<string>();
  for (const parts of inputs) {
    const id = deterministicUuid(...parts);
    t.match(id, V5, `${JSON.stringify(parts)} gives a v5-layout UUID`);
    t.ok(z.uuid().safeParse(id).success, 'accepted by z.uuid()');
    t.equal(deterministicUuid(...parts), id, 'stable');
    seen.add(id);
  }
  t.equal(seen.size, inputs.length, 'different inputs, different ids (including how parts are split)');
  t.equal(deterministicUuid('execution', 'alice', 'r1'), executionIdFor('alice', 'r1'));
});

t.test('deterministic ids are pinned: ids of stored events must not change between releases', async (t) => {
  // first 16 bytes of SHA-256 over the parts joined by NUL, version 5 and RFC 4122 variant bits set
  // (values computed independently with Python's hashlib)
  t.equal(deterministicUuid('a', 'b'), '59b271ae-1bbc-51d3-9d41-929817f4b16f');
  t.equal(executionIdFor('alice', 'req-1'), '6f28c837-f559-5806-aad3-1117e06f90d3');
});

t.test('executionIdFor is scoped per user', async (t) => {
  const a = executionIdFor('alice', 'req-1');
  t.match(a, V5);
  t.equal(executionIdFor('alice', 'req-1'), a, 'same user, same request id: same execution');
  t.not(executionIdFor('bob', 'req-1'), a, 'another user with the same request id gets another execution');
  t.not(executionIdFor('alice', 'req-2'), a, 'another request id');
  t.not(executionIdFor('alice', 'req-1 '), a);
});

t.test('eventIdFor gives one id per step', async (t) => {
  const exec = executionIdFor('alice', 'req-1');
  const steps = ['requested', 'executing:1', 'executing:2', 'terminal'] as const;
  const ids = steps.map((s) => eventIdFor(exec, s));
  for (const id of ids) t.match(id, V5);
  t.equal(new Set(ids).size, steps.length, 'each step its own id');
  t.strictSame(
    steps.map((s) => eventIdFor(exec, s)),
    ids,
    'stable: a retried append has the same ids',
  );
  t.not(
    eventIdFor(executionIdFor('bob', 'req-1'), 'terminal'),
    eventIdFor(exec, 'terminal'),
    'per execution',
  );
  t.not(eventIdFor(exec, 'requested'), exec, 'an event id is not the execution id');
});

t.test('subjects.toolRun', async (t) => {
  t.equal(
    subjects.toolRun('echo', '1.2.3'),
    'toolbus.tools.run.echo.1_2_3',
    'dots of the version become underscores',
  );
  t.equal(subjects.toolRun('web_search', '10.0.100'), 'toolbus.tools.run.web_search.10_0_100');
  const run = subjects.toolRun('echo', '1.2.3');
  t.equal(run.split('.').length, 5, 'the version is a single subject token');
  t.equal(
    subjects.toolRun('everything.get-sum', '1.0.0'),
    'toolbus.tools.run.everything.get-sum.1_0_0',
    'a namespaced name is two tokens: namespace, then the name as its server spells it',
  );
  t.equal(subjects.toolRun('fs.Read_File', '1.0.0').split('.').length, 6);
  for (const [name, version] of [
    ['Echo', '1.0.0'],
    ['e', '1.0.0'],
    ['echo.x.y', '1.0.0'],
    ['echo.', '1.0.0'],
    ['.echo', '1.0.0'],
    ['echo..x', '1.0.0'],
    ['Echo.x', '1.0.0'],
    ['-ns.x', '1.0.0'],
    ['ns.x*', '1.0.0'],
    ['ns.>', '1.0.0'],
    ['ns.*', '1.0.0'],
    ['ns.a b', '1.0.0'],
    ['ns.a\tb', '1.0.0'],
    [`ns.${'x'.repeat(65)}`, '1.0.0'],
    [`${'n'.repeat(33)}.x`, '1.0.0'],
    ['x'.repeat(100_000), '1.0.0'],
    ['echo*', '1.0.0'],
    ['echo>', '1.0.0'],
    ['has-dash', '1.0.0'],
    ['', '1.0.0'],
    ['1echo', '1.0.0'],
    ['echo', '1.0'],
    ['echo', '1.0.0.0'],
    ['echo', '01.0.0'],
    ['echo', '1.0.0-beta'],
    ['echo', '*'],
    ['echo', '>'],
    ['echo', '1.0.*'],
    ['echo', ''],
  ] as const) {
    t.throws(
      () => subjects.toolRun(name, version),
      { message: /invalid tool (name|version)/ },
      `${name}@${version}`,
    );
  }
});

t.test('tool namespaces', async (t) => {
  t.equal(toolNamespaceOf('everything.echo'), 'everything');
  t.equal(toolNamespaceOf('server-fs.read_file'), 'server-fs');
  t.equal(toolNamespaceOf('word_count'), undefined, 'a plain name has none');
  t.equal(toolNamespaceOf('a.b.c'), undefined, 'not a tool name');
  t.equal(assertToolNamespace('everything'), 'everything');
  for (const bad of ['', '*', '>', 'a.b', 'Everything', '-x', 'x'.repeat(33), 'a b'])
    t.throws(() => assertToolNamespace(bad), { message: /invalid tool namespace/ }, JSON.stringify(bad));
  t.equal(subjects.toolAnnounceAll, 'toolbus.tools.announce.>', 'names of one or two tokens');
  t.equal(subjects.toolCancelAll, 'toolbus.tools.cancel.>');
});
