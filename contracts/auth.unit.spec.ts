import t from 'tap';
import { isAdmin, Role, ROLES, TokenClaims } from './auth.ts';

t.test('TokenClaims', async (t) => {
  t.strictSame(TokenClaims.parse({ sub: 'alice', exp: 1_900_000_000 }), {
    sub: 'alice',
    roles: [],
    exp: 1_900_000_000,
  });
  t.strictSame(
    TokenClaims.parse({ sub: 'alice', roles: ['auditor', 'user'], exp: 1, iat: 0 }),
    {
      sub: 'alice',
      roles: ['auditor', 'user'],
      exp: 1,
    },
    'other registered claims are ignored',
  );
  for (const [what, claims] of [
    ['a subject that could spell a NATS wildcard', { sub: '*', exp: 1 }],
    ['a subject with a dot', { sub: 'alice.bob', exp: 1 }],
    ['no subject', { exp: 1 }],
    ['no expiry', { sub: 'alice' }],
    ['a fractional expiry', { sub: 'alice', exp: 1.5 }],
    ['a capitalised role', { sub: 'alice', roles: ['Admin'], exp: 1 }],
    ['roles as a string', { sub: 'alice', roles: 'admin', exp: 1 }],
    ['33 roles', { sub: 'alice', roles: Array.from({ length: 33 }, (_, i) => `r${i}`), exp: 1 }],
  ] as const) {
    t.notOk(TokenClaims.safeParse(claims).success, what);
  }
});

t.test('Role', async (t) => {
  for (const r of ['admin', 'auditor', 'user', 'a', 'data_reader', 'x-1']) t.ok(Role.safeParse(r).success, r);
  for (const r of ['', 'Admin', '1admin', '_x', 'a'.repeat(33), 'a b', 'a.b'])
    t.notOk(Role.safeParse(r).success, r);
});

t.test('isAdmin', async (t) => {
  t.ok(isAdmin({ userId: 'root', roles: ['user', ROLES.admin] }));
  t.notOk(isAdmin({ userId: 'alice', roles: ['user', 'auditor'] }));
  t.notOk(isAdmin({ userId: 'alice', roles: ['administrator'] }), 'no prefix match');
  t.notOk(isAdmin({ userId: 'alice', roles: [] }));
});
