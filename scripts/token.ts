/**
 * `npm run token -- <user> [role,role...] [--ttl 12h]`: a development token (HS256) for a user,
 * signed with the JWT_SECRET of the environment, else the one `npm start` generated in
 * .toolbus/secrets.env. For trying Toolbus out: open the live page with `#token=<it>`, or send it
 * as `Authorization: Bearer <it>`. `--ttl`: s, m, h or d, at most the services' JWT_MAX_LIFETIME_S
 * (24 h by default).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { CONSOLE_ROLES, isUserId, Role, ROLES } from '../contracts/index.ts';
import { signToken } from '../lib/auth.ts';
import { toolsFromConfiguration } from '../lib/toolbusConfig.ts';
import { exampleTools } from '../services/dispatcher/tools/index.ts';
import { LOCAL_DIR } from './local.ts';

const USAGE = 'usage: npm run token -- <user id: [A-Za-z0-9_-]{1,64}> [roles, comma-separated] [--ttl 12h]';

function args(): { values: { ttl: string }; positionals: string[] } {
  try {
    return parseArgs({ allowPositionals: true, options: { ttl: { type: 'string', default: '12h' } } });
  } catch (e) {
    // An unknown option, or --ttl without a value (`--ttl -5m` reads as an option): what and how.
    console.error(`${(e as Error).message}\n${USAGE}`);
    process.exit(2);
  }
}
const { values, positionals } = args();
const [user, roles = 'user', ...extra] = positionals;
if (!user || !isUserId(user) || extra.length > 0) {
  if (extra.length > 0) console.error(`unexpected argument(s): ${extra.join(' ')}`);
  console.error(USAGE);
  process.exit(2);
}
const roleList = roles.split(',').filter(Boolean);
const bad = roleList.filter((r) => !Role.safeParse(r).success);
if (bad.length > 0) {
  console.error(`invalid role(s) ${bad.join(', ')}: a role matches [a-z][a-z0-9_-]{0,31}`);
  process.exit(2);
}
// A role nothing here names is most often a typo: said, and the token made all the same (a
// deployment's own services or tools may name roles this checkout does not know).
const known = new Set<string>([...Object.values(ROLES), ...Object.values(CONSOLE_ROLES)]);
const configured = await toolsFromConfiguration(process.env).catch(() => []);
for (const tool of [...exampleTools, ...configured]) {
  for (const role of [...(tool.roles ?? []), ...(tool.approval?.approverRoles ?? [])]) known.add(role);
}
for (const role of (process.env['APPROVAL_DESTRUCTIVE_ROLES'] ?? '').split(','))
  if (role) known.add(role.trim());
const unknown = roleList.filter((r) => !known.has(r));
if (unknown.length > 0) {
  console.error(
    `note: no service or tool of this checkout names the role(s) ${unknown.join(', ')} (known: ${[...known].sort().join(', ')}); the token carries them anyway`,
  );
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
// Checked here: a token the services refuse (over their JWT_MAX_LIFETIME_S) is no use to anyone.
const UNIT_S: Record<string, number> = { s: 1, m: 60, h: 3_600, d: 86_400 };
const ttl = /^(\d{1,7})([smhd])$/.exec(values.ttl.trim());
const maxS = Number(process.env['JWT_MAX_LIFETIME_S'] ?? 86_400);
const ttlS = ttl ? Number(ttl[1]) * UNIT_S[ttl[2]!]! : NaN;
if (!(ttlS >= 1 && ttlS <= maxS)) {
  console.error(
    `invalid --ttl ${JSON.stringify(values.ttl)}: a number and s, m, h or d (30m, 12h), at most ${maxS} s (JWT_MAX_LIFETIME_S): the services refuse longer tokens`,
  );
  process.exit(2);
}
console.log(await signToken(secret, { sub: user, roles: roleList }, `${ttlS}s`));
