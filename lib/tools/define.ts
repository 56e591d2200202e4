import { z } from 'zod';
import {
  ApprovalPolicy,
  type ApprovalPolicyInput,
  JsonSchemaDoc,
  MAX_TIMEOUT_MS,
  Role,
  TOOL_NAME_PATTERN,
  ToolAnnotations,
  ToolManifest,
  VERSION_PATTERN,
} from '../../contracts/index.ts';
import { ToolDefinitionError } from './errors.ts';

export { ToolDefinitionError } from './errors.ts';

export const DEFAULT_TIMEOUT_MS = 30_000;

/** What a running tool gets besides its arguments. */
export interface ToolContext {
  /** Fires on timeout or cancellation. A tool that does I/O or waits should pass it on. */
  signal: AbortSignal;
  userId: string;
  roles: readonly string[];
  executionId: string;
  requestId: string;
  correlationId: string;
  /** Reports how far the tool is (0..1). The dispatcher wires it; a no-op by default. */
  progress(p: { fraction: number; message?: string }): void;
}

/** A tool as its author writes it: a contract (schemas, permissions, limits) and a `run`. */
export interface ToolDefinition<I extends z.ZodType = z.ZodType, O extends z.ZodType = z.ZodType> {
  name: string;
  version: string;
  description: string;
  input: I;
  output: O;
  /** The caller needs every one of these roles; `['admin']` makes the tool admin-only. */
  roles?: string[];
  /** Default 30 000; at most 600 000. */
  timeoutMs?: number;
  /** Safe to run again after a crash. Default false. */
  idempotent?: boolean;
  /** Results may be cached per user, keyed by the arguments. Default false. */
  cacheable?: boolean;
  /** Top-level input and output fields that are redacted before anything is stored or logged. */
  sensitive?: { input?: string[]; output?: string[] };
  annotations?: {
    title?: string;
    readOnlyHint?: boolean;
    destructiveHint?: boolean;
    idempotentHint?: boolean;
    openWorldHint?: boolean;
  };
  /**
   * Calls wait for an approver: always, or when one of the `when` rules holds for the arguments
   * (docs/approval.md). A destructive tool without it follows the operator's default.
   */
  approval?: ApprovalPolicyInput;
  run(args: z.infer<I>, ctx: ToolContext): Promise<z.infer<O>>;
}

/**
 * Checks a tool definition once, where it is written, and returns it unchanged with its types
 * inferred from the schemas. Throws `ToolDefinitionError` listing every problem.
 */
export function defineTool<I extends z.ZodType, O extends z.ZodType>(
  def: ToolDefinition<I, O>,
): ToolDefinition<I, O> {
  toManifest(def);
  return def;
}

type JsonSchemaObject = Record<string, unknown>;

function convert(
  schema: unknown,
  which: 'input' | 'output',
  problems: string[],
): JsonSchemaObject | undefined {
  if (!(schema instanceof z.ZodType)) {
    problems.push(`${which} must be a zod schema`);
    return undefined;
  }
  let doc: JsonSchemaObject;
  try {
    doc = z.toJSONSchema(schema, { io: which });
  } catch (e) {
    problems.push(`${which} schema cannot be expressed as JSON Schema: ${(e as Error).message}`);
    return undefined;
  }
  if (which === 'input') {
    // The input side of a transform converts, but then the JSON Schema would describe something
    // other than what run() receives. Converting the output side finds it.
    try {
      z.toJSONSchema(schema, { io: 'output' });
    } catch (e) {
      problems.push(
        `input schema cannot be expressed as JSON Schema: ${(e as Error).message} (parse or convert inside run() instead)`,
      );
      return undefined;
    }
  }
  if (!JsonSchemaDoc.safeParse(doc).success) {
    problems.push(`${which} schema is not a JSON Schema document with a type`);
    return undefined;
  }
  return doc;
}

/** The top-level property names of an object JSON Schema, or undefined when it is not one. */
export function topLevelProperties(doc: JsonSchemaObject | undefined): Set<string> | undefined {
  if (!doc || doc['type'] !== 'object') return undefined;
  const props = doc['properties'];
  return new Set(props && typeof props === 'object' ? Object.keys(props) : []);
}

/** Problems with `sensitive` field names given the (JSON) schemas they must be top-level keys of. */
export function sensitiveProblems(
  sensitive: { input?: unknown; output?: unknown } | undefined,
  inputSchema: JsonSchemaObject | undefined,
  outputSchema: JsonSchemaObject | undefined,
): string[] {
  const problems: string[] = [];
  if (sensitive === undefined) return problems;
  if (sensitive === null || typeof sensitive !== 'object')
    return ['sensitive must be { input?: string[]; output?: string[] }'];
  for (const [side, doc] of [
    ['input', inputSchema],
    ['output', outputSchema],
  ] as const) {
    const fields = sensitive[side];
    if (fields === undefined) continue;
    if (!Array.isArray(fields) || !fields.every((f) => typeof f === 'string')) {
      problems.push(`sensitive.${side} must be an array of field names`);
      continue;
    }
    if (fields.length === 0) continue;
    const props = topLevelProperties(doc);
    if (!props) {
      if (doc) problems.push(`sensitive.${side} needs an object ${side} schema (fields are top-level keys)`);
      continue;
    }
    for (const f of fields) {
      if (!props.has(f))
        problems.push(`sensitive.${side} field "${f}" is not a top-level key of the ${side} schema`);
    }
  }
  return problems;
}

/**
 * The manifest a definition announces: JSON Schemas converted from the zod schemas (the input as
 * callers write it, the output as the tool returns it), defaults filled in, checked against the
 * `ToolManifest` contract. Throws `ToolDefinitionError` naming the tool and every problem.
 */
export function toManifest(def: ToolDefinition): ToolManifest {
  if (def === null || typeof def !== 'object')
    throw new ToolDefinitionError('(unnamed)', ['a tool definition must be an object']);
  const d = def as unknown as Record<string, unknown>;
  const label =
    typeof d['name'] === 'string' && d['name'] ? `${d['name']}@${String(d['version'])}` : '(unnamed)';
  const problems: string[] = [];

  if (typeof d['name'] !== 'string' || !TOOL_NAME_PATTERN.test(d['name'])) {
    problems.push(
      `name ${JSON.stringify(d['name'])} must match ${TOOL_NAME_PATTERN.source} (lower case, digits, _)`,
    );
  }
  if (typeof d['version'] !== 'string' || !VERSION_PATTERN.test(d['version'])) {
    problems.push(`version ${JSON.stringify(d['version'])} must be MAJOR.MINOR.PATCH (e.g. 1.0.0)`);
  }
  if (typeof d['description'] !== 'string' || d['description'].length < 1 || d['description'].length > 1000) {
    problems.push('description must be 1 to 1000 characters');
  }
  const inputSchema = convert(d['input'], 'input', problems);
  if (inputSchema && inputSchema['type'] !== 'object') {
    problems.push(
      `input schema must be an object schema (z.object), not ${JSON.stringify(inputSchema['type'] ?? 'a union')}`,
    );
  }
  const outputSchema = convert(d['output'], 'output', problems);

  const roles = d['roles'] ?? [];
  if (!Array.isArray(roles) || roles.length > 16 || !roles.every((r) => Role.safeParse(r).success)) {
    problems.push('roles must be at most 16 role names matching [a-z][a-z0-9_-]{0,31}');
  }
  const timeoutMs = d['timeoutMs'] ?? DEFAULT_TIMEOUT_MS;
  if (
    typeof timeoutMs !== 'number' ||
    !Number.isInteger(timeoutMs) ||
    timeoutMs < 1 ||
    timeoutMs > MAX_TIMEOUT_MS
  ) {
    problems.push(
      `timeoutMs must be a whole number from 1 to ${MAX_TIMEOUT_MS}, not ${JSON.stringify(timeoutMs)}`,
    );
  }
  for (const flag of ['idempotent', 'cacheable'] as const) {
    if (d[flag] !== undefined && typeof d[flag] !== 'boolean') problems.push(`${flag} must be true or false`);
  }
  problems.push(
    ...sensitiveProblems(
      d['sensitive'] as { input?: unknown; output?: unknown } | undefined,
      inputSchema,
      outputSchema,
    ),
  );
  if (d['annotations'] !== undefined) {
    const a = ToolAnnotations.safeParse(d['annotations']);
    if (!a.success)
      problems.push(...a.error.issues.map((i) => `annotations.${i.path.join('.')}: ${i.message}`));
  }
  if (d['approval'] !== undefined) {
    const a = ApprovalPolicy.safeParse(d['approval']);
    if (!a.success) problems.push(...a.error.issues.map((i) => `approval.${i.path.join('.')}: ${i.message}`));
    // A rule on a field the input does not have would never hold: the call would run unasked.
    const props = topLevelProperties(inputSchema);
    for (const [i, rule] of (a.data?.when ?? []).entries()) {
      const field = rule.path.split('.')[0]!;
      if (props && !props.has(field))
        problems.push(`approval.when.${i}.path: "${field}" is not a top-level key of the input schema`);
    }
  }
  if (typeof d['run'] !== 'function') problems.push('run must be a function');
  if (problems.length > 0) throw new ToolDefinitionError(label, problems);

  const sensitive = def.sensitive ?? {};
  const candidate = {
    name: def.name,
    version: def.version,
    description: def.description,
    inputSchema,
    outputSchema,
    roles: [...(roles as string[])],
    timeoutMs,
    idempotent: def.idempotent ?? false,
    cacheable: def.cacheable ?? false,
    sensitive: { input: [...(sensitive.input ?? [])], output: [...(sensitive.output ?? [])] },
    ...(def.annotations ? { annotations: { ...def.annotations } } : {}),
    ...(def.approval ? { approval: def.approval } : {}),
  };
  const parsed = ToolManifest.safeParse(candidate);
  if (!parsed.success) {
    throw new ToolDefinitionError(
      label,
      parsed.error.issues.map((i) => `${i.path.join('.') || 'manifest'}: ${i.message}`),
    );
  }
  return parsed.data;
}
