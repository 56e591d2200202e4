import { z } from 'zod';
import { UserId } from './ids.ts';

export const Role = z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/, 'role must match [a-z][a-z0-9_-]{0,31}');
export type Role = z.infer<typeof Role>;

/** Roles with a meaning of their own. Tools may require any other role too. */
export const ROLES = { admin: 'admin', auditor: 'auditor', user: 'user' } as const;

/** The claims Toolbus reads from a verified user token (JWT). */
export const TokenClaims = z.object({
  sub: UserId,
  roles: z.array(Role).max(32).default([]),
  exp: z.number().int(),
});
export type TokenClaims = z.infer<typeof TokenClaims>;

export interface Principal {
  userId: string;
  roles: readonly string[];
  /** When the token that proved it expires (epoch ms), if it came from a token. */
  expiresAt?: number;
}

export const isAdmin = (p: Principal): boolean => p.roles.includes(ROLES.admin);
