export const REDACTED = '[REDACTED]';

/**
 * Replaces the listed top-level fields of an object with `"[REDACTED]"`, on a copy: the input is
 * never changed. `redacted` lists the fields that were present and replaced, in the order given
 * (field names as the manifest's `sensitive` lists them). Anything other than a plain object
 * (an array, a string, null) comes back as it is, with nothing redacted.
 */
export function redact<T>(value: T, fields: readonly string[]): { value: T; redacted: string[] } {
  if (fields.length === 0 || value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { value, redacted: [] };
  }
  const source = value as Record<string, unknown>;
  const redacted: string[] = [];
  for (const f of new Set(fields)) {
    if (Object.prototype.hasOwnProperty.call(source, f) && source[f] !== undefined) redacted.push(f);
  }
  if (redacted.length === 0) return { value, redacted };
  const copy: Record<string, unknown> = {};
  for (const key of Object.keys(source)) {
    // defineProperty, so that a key such as "__proto__" stays an own key of the copy.
    Object.defineProperty(copy, key, {
      value: redacted.includes(key) ? REDACTED : source[key],
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return { value: copy as T, redacted };
}
