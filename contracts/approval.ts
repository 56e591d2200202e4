import { z } from 'zod';
import { Role } from './auth.ts';
import { canonicalJson } from './chain.ts';
import { ArgsHash, ApproverRole } from './events.ts';
import { JsonObject, JsonValue } from './json.ts';

/**
 * Approval: which calls wait for a human, who may decide them, for how long, and what the
 * approvers' HTTP API speaks. Pure: the dispatcher judges a call with `approvalNeeded` after
 * admission, and records the outcome through the execution decider (execution.ts). See
 * docs/approval.md.
 */

export const DEFAULT_APPROVAL_TIMEOUT_MS = 15 * 60_000;
/** A wait longer than a week is a queue, not an approval. */
export const MAX_APPROVAL_TIMEOUT_MS = 7 * 24 * 60 * 60_000;
/** Holds every approval besides the roles a policy names. */
export const ADMIN_ROLE = 'admin';

const FIELD = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
/** A dotted path into the arguments; `*` stands for every element of an array (or value of an object). */
export const ArgumentPath = z
  .string()
  .max(256)
  .refine(
    (p) => p.split('.').every((s, i) => FIELD.test(s) || (i > 0 && s === '*')),
    'must be field names joined by dots, with * for every element (e.g. rows.*.hourlyRate)',
  );

const NUMERIC_OPS = ['gt', 'gte', 'lt', 'lte'] as const;

/**
 * One condition on the arguments, plain JSON so that a remote worker can declare it. The values
 * at `path` (several through `*`; each multiplied by its sibling field `times` when given) are
 * reduced by `aggregate` — `any`: the rule holds when one value compares true; `sum`: their sum
 * is compared; `count`: how many there are — and compared with `value` by `op`.
 * Example, a spend above 10 000: `{ path: 'rows.*.usageHours', times: 'hourlyRate',
 * aggregate: 'sum', op: 'gt', value: 10000 }`.
 */
export const ApprovalRule = z
  .strictObject({
    path: ArgumentPath,
    times: z.string().regex(FIELD, 'must be a field name').optional(),
    aggregate: z.enum(['any', 'sum', 'count']).default('any'),
    op: z.enum([...NUMERIC_OPS, 'eq', 'ne', 'in']),
    value: JsonValue,
  })
  .superRefine((r, ctx) => {
    const numeric = (NUMERIC_OPS as readonly string[]).includes(r.op);
    if (numeric && typeof r.value !== 'number')
      ctx.addIssue({ code: 'custom', path: ['value'], message: `${r.op} compares with a number` });
    if (r.op === 'in' && !Array.isArray(r.value))
      ctx.addIssue({ code: 'custom', path: ['value'], message: 'in compares with a list of values' });
    if (r.aggregate !== 'any' && !numeric)
      ctx.addIssue({
        code: 'custom',
        path: ['op'],
        message: `${r.aggregate} is compared with gt, gte, lt or lte`,
      });
  });
export type ApprovalRule = z.infer<typeof ApprovalRule>;

/** A manifest's `approval`: calls of the tool (or those matching `when`) wait for an approver. */
export const ApprovalPolicy = z.strictObject({
  /** Holders of any one of these roles (and admins) may approve or deny. */
  approverRoles: z.array(Role).min(1).max(15),
  /** How long a call waits before it ends APPROVAL_EXPIRED. */
  timeoutMs: z.number().int().min(1_000).max(MAX_APPROVAL_TIMEOUT_MS).default(DEFAULT_APPROVAL_TIMEOUT_MS),
  /** Absent: every call waits. Present: a call waits when any rule holds for its arguments. */
  when: z.array(ApprovalRule).min(1).max(16).optional(),
  /** Whether the user who asked for the call may approve it themselves. */
  allowSelfApproval: z.boolean().default(false),
});
export type ApprovalPolicy = z.infer<typeof ApprovalPolicy>;
export type ApprovalPolicyInput = z.input<typeof ApprovalPolicy>;

/** What an approval asks for, before it gets a deadline and a hash: the policy that applies. */
export interface ApprovalNeed {
  approverRoles: string[];
  timeoutMs: number;
  allowSelfApproval: boolean;
  /** Why: the tool's own policy, or the operator's rule for destructive tools. */
  because: 'policy' | 'destructive';
}

/** The operator's policy for tools annotated destructive that declare none; null: they run unasked. */
export type DestructiveDefault = Omit<ApprovalPolicy, 'when'> | null;

type Found = { value: JsonValue; parent: JsonValue };

function valuesAt(args: JsonValue, path: string): Found[] {
  let found: Found[] = [{ value: args, parent: null }];
  for (const step of path.split('.')) {
    const next: Found[] = [];
    for (const { value } of found) {
      if (value === null || typeof value !== 'object') continue;
      const children = step === '*' ? Object.values(value) : [(value as Record<string, JsonValue>)[step]];
      for (const child of children) if (child !== undefined) next.push({ value: child, parent: value });
    }
    found = next;
  }
  return found;
}

function compare(op: ApprovalRule['op'], a: JsonValue, b: JsonValue): boolean {
  switch (op) {
    case 'gt':
      return typeof a === 'number' && a > (b as number);
    case 'gte':
      return typeof a === 'number' && a >= (b as number);
    case 'lt':
      return typeof a === 'number' && a < (b as number);
    case 'lte':
      return typeof a === 'number' && a <= (b as number);
    case 'eq':
      return canonicalJson(a) === canonicalJson(b);
    case 'ne':
      return canonicalJson(a) !== canonicalJson(b);
    case 'in':
      return Array.isArray(b) && b.some((x) => canonicalJson(x) === canonicalJson(a));
  }
}

/** Whether the rule holds for these (exact, unredacted) arguments. */
export function ruleHolds(rule: ApprovalRule, args: JsonObject): boolean {
  const values = valuesAt(args, rule.path).map(({ value, parent }) => {
    if (rule.times === undefined) return value;
    const factor =
      parent !== null && typeof parent === 'object' && !Array.isArray(parent)
        ? parent[rule.times]
        : undefined;
    return typeof value === 'number' && typeof factor === 'number' ? value * factor : null;
  });
  switch (rule.aggregate) {
    case 'any':
      return values.some((v) => compare(rule.op, v, rule.value));
    case 'sum':
      return compare(
        rule.op,
        values.reduce<number>((s, v) => s + (typeof v === 'number' ? v : 0), 0),
        rule.value,
      );
    case 'count':
      return compare(rule.op, values.length, rule.value);
  }
}

/**
 * Whether a call of the tool with these arguments waits for approval, and by whom: the tool's own
 * policy (when its rules hold, or always without rules), else the operator's default for tools
 * annotated destructive. Admins may always decide, so `admin` is among the approver roles.
 */
export function approvalNeeded(
  manifest: {
    approval?: ApprovalPolicy | undefined;
    annotations?: { destructiveHint?: boolean | undefined } | undefined;
  },
  args: JsonObject,
  destructive: DestructiveDefault,
): ApprovalNeed | null {
  const withAdmin = (roles: readonly string[]) => [...new Set([...roles, ADMIN_ROLE])];
  const policy = manifest.approval;
  if (policy) {
    if (policy.when && !policy.when.some((r) => ruleHolds(r, args))) return null;
    return {
      approverRoles: withAdmin(policy.approverRoles),
      timeoutMs: policy.timeoutMs,
      allowSelfApproval: policy.allowSelfApproval,
      because: 'policy',
    };
  }
  if (manifest.annotations?.destructiveHint === true && destructive) {
    return {
      approverRoles: withAdmin(destructive.approverRoles),
      timeoutMs: destructive.timeoutMs,
      allowSelfApproval: destructive.allowSelfApproval,
      because: 'destructive',
    };
  }
  return null;
}

/**
 * The manifest as callers should see it: a tool annotated destructive that declares no policy shows
 * the operator's default as its `approval` (its calls wait for an approver all the same). Agents and
 * the MCP gateway (which offers such tools as tasks) read `approval` to know a call will wait.
 */
export function withEffectiveApproval<
  M extends {
    approval?: ApprovalPolicy | undefined;
    annotations?: { destructiveHint?: boolean | undefined } | undefined;
  },
>(manifest: M, destructive: DestructiveDefault): M {
  if (manifest.approval || manifest.annotations?.destructiveHint !== true || !destructive) return manifest;
  return {
    ...manifest,
    approval: {
      approverRoles: [...destructive.approverRoles],
      timeoutMs: destructive.timeoutMs,
      allowSelfApproval: destructive.allowSelfApproval,
    },
  };
}

// ---- The approvers' HTTP API (services/dispatcher/approvalRoutes.ts; docs/approval.md) ----

/** `POST /executions/:executionId/approve`: the hash of the arguments the approver saw. */
export const ApproveBody = z.strictObject({
  argsHash: ArgsHash,
  reason: z.string().max(500).optional(),
});
/** `POST /executions/:executionId/deny`: a denial says why. */
export const DenyBody = z.strictObject({
  argsHash: ArgsHash,
  reason: z.string().min(1).max(500),
});

/** One waiting approval as `GET /approvals` lists it. */
export const PendingApproval = z.strictObject({
  executionId: z.uuid(),
  userId: z.string(),
  tool: z.string(),
  version: z.string().nullable(),
  /** As stored: sensitive fields are `"[REDACTED]"`. */
  args: JsonObject,
  argsHash: ArgsHash,
  approverRoles: z.array(ApproverRole),
  deadline: z.iso.datetime({ offset: true }),
  requestedAt: z.iso.datetime({ offset: true }),
});
export type PendingApproval = z.infer<typeof PendingApproval>;

/** `GET /approvals?after=<cursor>&limit=<n>`: oldest first; `next` is the cursor of the next page. */
export const ApprovalsPage = z.strictObject({
  approvals: z.array(PendingApproval),
  next: z.string().nullable(),
});
export type ApprovalsPage = z.infer<typeof ApprovalsPage>;

export const ApprovalsQuery = z.strictObject({
  after: z.string().max(200).optional(),
  limit: z.coerce.number().int().min(1).max(200).default(50),
});
