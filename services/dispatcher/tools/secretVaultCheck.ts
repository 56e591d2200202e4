import { createHash } from 'node:crypto';
import { z } from 'zod';
import { defineTool } from '../../../lib/tools/index.ts';

/**
 * Checks an API key without ever giving it back: its format (which provider's key it looks
 * like), its length and character classes, an entropy estimate, common mistakes (whitespace,
 * placeholders, long repeats) and a fingerprint (`sha256:` + the first 16 hex digits of SHA-256
 * of the key) to compare keys across systems. `apiKey` is a sensitive input: the dispatcher
 * stores and logs it as "[REDACTED]".
 */

export const KEY_FORMATS = [
  'aws_access_key_id',
  'github_token',
  'stripe_key',
  'slack_token',
  'openai_key',
  'jwt',
  'uuid',
  'hex',
  'unknown',
] as const;
export type KeyFormat = (typeof KEY_FORMATS)[number];

const PATTERNS: Array<[KeyFormat, RegExp]> = [
  ['aws_access_key_id', /^(AKIA|ASIA)[0-9A-Z]{16}$/],
  ['github_token', /^(?:(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,255})$/],
  ['stripe_key', /^(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}$/],
  ['slack_token', /^xox[abposr]-[A-Za-z0-9-]{10,}$/],
  ['openai_key', /^sk-(?:proj-)?[A-Za-z0-9_-]{20,}$/],
  ['jwt', /^eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/],
  ['uuid', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i],
  ['hex', /^[0-9a-f]{32,}$/i],
];

const PLACEHOLDERS = [
  'changeme',
  'example',
  'your_api_key',
  'your-api-key',
  'placeholder',
  'xxxxxxxx',
  'test1234',
  'password',
];

export function detectFormat(key: string): KeyFormat {
  for (const [format, re] of PATTERNS) if (re.test(key)) return format;
  return 'unknown';
}

/** Shannon entropy of the key's own character distribution, times its length, in bits. */
export function entropyBits(key: string): number {
  const chars = [...key];
  if (chars.length === 0) return 0;
  const counts = new Map<string, number>();
  for (const c of chars) counts.set(c, (counts.get(c) ?? 0) + 1);
  let perChar = 0;
  for (const n of counts.values()) {
    const p = n / chars.length;
    perChar -= p * Math.log2(p);
  }
  return Math.round(perChar * chars.length * 10) / 10;
}

export const fingerprint = (key: string): string =>
  `sha256:${createHash('sha256').update(key, 'utf8').digest('hex').slice(0, 16)}`;

const Input = z.object({
  apiKey: z.string().min(1).max(4096),
  /** When given, the result says whether the key has this format. */
  expectedFormat: z.enum(KEY_FORMATS).optional(),
});

const Output = z.object({
  fingerprint: z.string(),
  length: z.number().int(),
  detectedFormat: z.enum(KEY_FORMATS),
  formatMatches: z.boolean().nullable(),
  characterClasses: z.object({
    lower: z.boolean(),
    upper: z.boolean(),
    digit: z.boolean(),
    symbol: z.boolean(),
  }),
  entropyBits: z.number(),
  strength: z.enum(['weak', 'fair', 'strong']),
  problems: z.array(z.string()),
});
export type KeyCheck = z.infer<typeof Output>;

export function checkKey(apiKey: string, expectedFormat?: KeyFormat): KeyCheck {
  const detectedFormat = detectFormat(apiKey);
  const bits = entropyBits(apiKey);
  const problems: string[] = [];
  if (/\s/.test(apiKey)) problems.push('contains whitespace (a copy-and-paste error?)');
  if ([...apiKey].length < 20) problems.push('shorter than 20 characters');
  if (/(.)\1{5,}/su.test(apiKey)) problems.push('has a character repeated 6 or more times in a row');
  const lower = apiKey.toLowerCase();
  const placeholder = PLACEHOLDERS.find((p) => lower.includes(p));
  if (placeholder) problems.push('looks like a placeholder, not a real key');
  if (expectedFormat && expectedFormat !== detectedFormat)
    problems.push(`does not look like a ${expectedFormat}`);
  return {
    fingerprint: fingerprint(apiKey),
    length: [...apiKey].length,
    detectedFormat,
    formatMatches: expectedFormat ? expectedFormat === detectedFormat : null,
    characterClasses: {
      lower: /[a-z]/.test(apiKey),
      upper: /[A-Z]/.test(apiKey),
      digit: /[0-9]/.test(apiKey),
      symbol: /[^A-Za-z0-9]/.test(apiKey),
    },
    entropyBits: bits,
    strength: bits < 64 ? 'weak' : bits < 128 ? 'fair' : 'strong',
    problems,
  };
}

export const secretVaultCheck = defineTool({
  name: 'secret_vault_check',
  version: '1.0.0',
  description:
    'Checks an API key without revealing it: detected provider format, length, character classes, entropy estimate, ' +
    'common mistakes, and a SHA-256 fingerprint. The key itself is never stored, logged or returned.',
  input: Input,
  output: Output,
  sensitive: { input: ['apiKey'] },
  timeoutMs: 5_000,
  idempotent: true,
  cacheable: false,
  // It looks at the key it is given; it calls no provider (closed world) and stores nothing.
  annotations: {
    title: 'API key check',
    readOnlyHint: true,
    destructiveHint: false,
    idempotentHint: true,
    openWorldHint: false,
  },
  async run({ apiKey, expectedFormat }) {
    return checkKey(apiKey, expectedFormat);
  },
});
