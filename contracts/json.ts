import { z } from 'zod';

export type JsonPrimitive = string | number | boolean | null;
export type JsonValue = JsonPrimitive | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export const JsonValue: z.ZodType<JsonValue, JsonValue> = z.lazy(() =>
  z.union([
    z.string(),
    z.number().refine(Number.isFinite, 'numbers must be finite'),
    z.boolean(),
    z.null(),
    z.array(JsonValue),
    z.record(z.string(), JsonValue),
  ]),
);
export const JsonObject = z.record(z.string(), JsonValue) as z.ZodType<JsonObject, JsonObject>;

export const LIMITS = {
  /** Largest request body accepted over NATS or HTTP. */
  maxRequestBytes: 256 * 1024,
  /** Deepest nesting of objects and arrays in arguments. */
  maxDepth: 32,
} as const;

/** Keys that could reach `Object.prototype` when a value is later merged or spread. */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

export type JsonShapeProblem = { path: string; problem: string };

/**
 * Walks parsed JSON once and reports the first problem that the zod schema cannot express:
 * nesting deeper than `maxDepth`, or a key that could pollute a prototype.
 */
export function checkJsonShape(value: unknown, maxDepth: number = LIMITS.maxDepth): JsonShapeProblem | null {
  const stack: Array<{ v: unknown; path: string; depth: number }> = [{ v: value, path: '$', depth: 0 }];
  while (stack.length > 0) {
    const { v, path, depth } = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth >= maxDepth) return { path, problem: `nesting deeper than ${maxDepth}` };
    if (Array.isArray(v)) {
      v.forEach((item, i) => stack.push({ v: item, path: `${path}[${i}]`, depth: depth + 1 }));
      continue;
    }
    for (const key of Object.keys(v)) {
      if (FORBIDDEN_KEYS.has(key)) return { path: `${path}.${key}`, problem: `key "${key}" is not allowed` };
      stack.push({ v: (v as Record<string, unknown>)[key], path: `${path}.${key}`, depth: depth + 1 });
    }
  }
  return null;
}
