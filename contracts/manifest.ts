import { z } from 'zod';
import { ApprovalPolicy } from './approval.ts';
import { Role } from './auth.ts';
import { ToolName, ToolVersion } from './ids.ts';

const isTypeName = (t: unknown): boolean => typeof t === 'string';

/**
 * A JSON Schema document, as produced by `z.toJSONSchema`. Checked for shape, not for meaning:
 * it needs a `type` (a name, or a list of names as for `z.string().nullable()`), a combinator,
 * a `$ref`, or a `$schema` declaration (what `z.unknown()` gives).
 */
export const JsonSchemaDoc = z
  .record(z.string(), z.unknown())
  .refine(
    (s) =>
      isTypeName(s['type']) ||
      (Array.isArray(s['type']) && s['type'].length > 0 && s['type'].every(isTypeName)) ||
      Array.isArray(s['anyOf']) ||
      Array.isArray(s['oneOf']) ||
      Array.isArray(s['allOf']) ||
      s['$ref'] !== undefined ||
      typeof s['$schema'] === 'string',
    'must be a JSON Schema with a type',
  );

/** Behaviour hints in the form MCP uses. Advice to clients; `idempotent` alone decides re-runs. */
export const ToolAnnotations = z.strictObject({
  title: z.string().max(100).optional(),
  readOnlyHint: z.boolean().optional(),
  destructiveHint: z.boolean().optional(),
  idempotentHint: z.boolean().optional(),
  openWorldHint: z.boolean().optional(),
});

export const MAX_TIMEOUT_MS = 10 * 60_000;

/** What a tool declares about itself: served by the HTTP API and announced by tool workers. */
export const ToolManifest = z.strictObject({
  name: ToolName,
  version: ToolVersion,
  description: z.string().min(1).max(1000),
  inputSchema: JsonSchemaDoc,
  outputSchema: JsonSchemaDoc,
  /** The caller needs every one of these roles. `admin` makes a tool admin-only. */
  roles: z.array(Role).max(16),
  timeoutMs: z.number().int().min(1).max(MAX_TIMEOUT_MS),
  /** Safe to run again after a crash. A non-idempotent tool is never re-run silently. */
  idempotent: z.boolean(),
  /** Results may be cached per user, keyed by the arguments. */
  cacheable: z.boolean(),
  /** Top-level input and output fields that are never stored or logged in clear. */
  sensitive: z
    .strictObject({ input: z.array(z.string()).default([]), output: z.array(z.string()).default([]) })
    .default({ input: [], output: [] }),
  annotations: ToolAnnotations.optional(),
  /**
   * Calls wait for an approver (docs/approval.md): always, or when a rule on the arguments holds.
   * Without it, a tool annotated `destructiveHint: true` follows the operator's default.
   */
  approval: ApprovalPolicy.optional(),
});
export type ToolManifest = z.infer<typeof ToolManifest>;
export type ToolManifestInput = z.input<typeof ToolManifest>;

/** A worker's announcement: manifests, signed with the shared worker secret (HMAC-SHA256). */
export const ToolAnnouncement = z.strictObject({
  workerId: z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/),
  /** Every version of the subject's tool this worker serves; empty: it serves none any more. */
  manifests: z.array(z.unknown()).max(100),
  issuedAt: z.number().int(),
  signature: z.string().regex(/^[0-9a-f]{64}$/),
});
export type ToolAnnouncement = z.infer<typeof ToolAnnouncement>;

/** What a dispatcher publishes on `subjects.toolRefused(tool)` when it refuses a signed announcement. */
export const AnnouncementRefusal = z.strictObject({
  workerId: ToolAnnouncement.shape.workerId,
  /** The tool (and version, when the manifest named one) that was not registered. */
  tool: z.string().max(200),
  reason: z.string().max(2_000),
});
export type AnnouncementRefusal = z.infer<typeof AnnouncementRefusal>;
