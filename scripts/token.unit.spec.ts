import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { decodeJwt } from 'jose';
import t from 'tap';

/** `npm run token`: what it makes is a token the services accept, or it says why not. */
const script = fileURLToPath(new URL('./token.ts', import.meta.url));
const run = async (...args: string[]): Promise<{ code: number; out: string; err: string }> => {
  try {
    const { stdout, stderr } = await promisify(execFile)(
      process.execPath,
      ['--import', 'tsx', script, ...args],
      {
        env: { ...process.env, JWT_SECRET: 'a-development-secret-of-at-least-32-characters' },
      },
    );
    return { code: 0, out: stdout.trim(), err: stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, out: x.stdout.trim(), err: x.stderr };
  }
};

t.test('--ttl within the services’ maximum lifetime makes a token that long', async (t) => {
  const { code, out } = await run('alice', 'user,auditor', '--ttl', '30m');
  t.equal(code, 0);
  const claims = decodeJwt(out);
  t.equal(claims.exp! - claims.iat!, 1800, '30 minutes');
  t.match(claims, { sub: 'alice', roles: ['user', 'auditor'] });
});

t.test('a --ttl the services would refuse, or not a duration, is refused with the reason', async (t) => {
  for (const ttl of ['48h', 'banana', '0s']) {
    const { code, out, err } = await run('alice', '--ttl', ttl);
    t.equal(code, 2, `${ttl}: exit 2`);
    t.equal(out, '', `${ttl}: no token`);
    t.match(err, /invalid --ttl .*at most 86400 s/, `${ttl}: says why`);
    t.notMatch(err, /at .*\(.*:\d+:\d+\)/, `${ttl}: no stack trace`);
  }
});

t.test('a bad option or a stray argument is told with the usage, not a stack trace', async (t) => {
  for (const args of [
    ['eve', 'user', '--ttl', '-5m'],
    ['eve', 'user', '--expiry', '1h'],
    ['eve', 'user,admin', 'extra'],
  ]) {
    const { code, out, err } = await run(...args);
    t.equal(code, 2, args.join(' '));
    t.equal(out, '', 'no token');
    t.match(err, /usage: npm run token/);
    t.notMatch(err, /\n\s+at /, 'no stack trace');
  }
});

t.test('a role nothing names is made, with a note on stderr; a known one without', async (t) => {
  const typo = await run('carol', 'user,superadmin');
  t.equal(typo.code, 0, 'the token is made');
  t.match(decodeJwt(typo.out), { roles: ['user', 'superadmin'] });
  t.match(typo.err, /note: .*superadmin.*known: .*admin.*operator/);
  const known = await run('carol', 'user,auditor,approver');
  t.equal(known.code, 0);
  t.equal(known.err, '', 'auditor and approver are known');
});
