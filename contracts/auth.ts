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

// --- The operator console's roles (docs/console.md) ---

/** Roles of the people at the operator console (beside `admin` and `auditor` above). */
export const CONSOLE_ROLES = { operator: 'operator', approver: 'approver' } as const;

/**
 * Who may read every user's executions, activity and execution events (not only their own): the
 * console's readers. An approver must see the call it decides; an auditor already reads whole
 * histories through the auditor.
 */
export const ALL_USERS_READERS: readonly string[] = [
  ROLES.admin,
  CONSOLE_ROLES.operator,
  CONSOLE_ROLES.approver,
  ROLES.auditor,
];
export const mayReadAllUsers = (p: Principal): boolean => p.roles.some((r) => ALL_USERS_READERS.includes(r));

/** Who may cancel another user's execution: admins and operators. */
export const OTHERS_CANCELLERS: readonly string[] = [ROLES.admin, CONSOLE_ROLES.operator];
export const mayCancelFor = (p: Principal, userId: string): boolean =>
  p.userId === userId || p.roles.some((r) => OTHERS_CANCELLERS.includes(r));
