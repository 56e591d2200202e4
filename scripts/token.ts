/**
 * `npm run token -- <user> [role,role...] [--ttl 12h]`: a development token (HS256) for a user,
 * signed with the JWT_SECRET of the environment, else the one `npm start` generated in
 * .toolbus/secrets.env. For trying Toolbus out: open the live page with `#token=<it>`, or send it
 * as `Authorization: Bearer <it>`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { isUserId, Role } from '../contracts/index.ts';
import { signToken } from '../lib/auth.ts';
import { LOCAL_DIR } from './local.ts';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { ttl: { type: 'string', default: '12h' } },
});
const [user, roles = 'user'] = positionals;
if (!user || !isUserId(user)) {
  console.error(
    'usage: npm run token -- <user id: [A-Za-z0-9_-]{1,64}> [roles, comma-separated] [--ttl 12h]',
  );
  process.exit(2);
}
const roleList = roles.split(',').filter(Boolean);
const bad = roleList.filter((r) => !Role.safeParse(r).success);
if (bad.length > 0) {
  console.error(`invalid role(s) ${bad.join(', ')}: a role matches [a-z][a-z0-9_-]{0,31}`);
  process.exit(2);
}
let secret = process.env['JWT_SECRET'];
const secretsFile = join(LOCAL_DIR, 'secrets.env');
if (!secret && existsSync(secretsFile)) {
  secret = /^JWT_SECRET=(.+)$/m.exec(readFileSync(secretsFile, 'utf8'))?.[1]?.trim();
}
if (!secret) {
  console.error('no JWT_SECRET: set it, or run `npm start` once (it generates one in .toolbus/secrets.env)');
  process.exit(2);
}
console.log(await signToken(secret, { sub: user, roles: roleList }, values.ttl));
