import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { z } from 'zod';
import { canonicalJson, Hash, UserId } from '../../contracts/index.ts';

/**
 * A checkpoint is the verifier's signed word that, at `issuedAt`, the user's history was sound up
 * to `revision`, whose event was `eventId` with hash `hash`. Because every hash covers the one
 * before, the hash at one revision fixes the whole history up to it: a later verification against
 * the checkpoint detects a removed tail (the stream no longer reaches `revision`) and any rewrite
 * that recomputed the chain (a different hash at `revision`).
 *
 * Signed with HMAC-SHA256 under AUDIT_SIGNING_KEY over the canonical JSON of every field but
 * `signature` (docs/decisions/0007-audit-checkpoint-signature.md). `keyId` names the key (the
 * first 16 hex digits of its SHA-256) so that a checkpoint made under another key is told apart
 * from a forged one.
 */
export const CHECKPOINT_KIND = 'toolbus.audit.checkpoint';
export const CHECKPOINT_ALGORITHM = 'HMAC-SHA256';

export const CheckpointBody = z.strictObject({
  kind: z.literal(CHECKPOINT_KIND),
  version: z.literal(1),
  userId: UserId,
  stream: z.string().min(1),
  revision: z.number().int().min(0),
  eventId: z.uuid(),
  hash: Hash,
  /** Events verified when the checkpoint was issued (revision + 1). */
  events: z.number().int().min(1),
  issuedAt: z.iso.datetime({ offset: true }),
  /** Who asked for it (the auditor's user id, or the CLI's AUDITOR_ID / OS user). */
  issuedBy: z.string().min(1).max(128),
  algorithm: z.literal(CHECKPOINT_ALGORITHM),
  keyId: z.string().regex(/^[0-9a-f]{16}$/),
});
export type CheckpointBody = z.infer<typeof CheckpointBody>;

export const Checkpoint = CheckpointBody.extend({
  signature: z.string().regex(/^[A-Za-z0-9_-]{43}$/, 'must be a base64url HMAC-SHA256'),
});
export type Checkpoint = z.infer<typeof Checkpoint>;

export const keyIdOf = (key: string): string => createHash('sha256').update(key).digest('hex').slice(0, 16);

const mac = (body: CheckpointBody, key: string): Buffer =>
  createHmac('sha256', key).update(canonicalJson(body)).digest();

export function signCheckpoint(
  body: Omit<CheckpointBody, 'kind' | 'version' | 'algorithm' | 'keyId'>,
  key: string,
): Checkpoint {
  const full: CheckpointBody = {
    kind: CHECKPOINT_KIND,
    version: 1,
    ...body,
    algorithm: CHECKPOINT_ALGORITHM,
    keyId: keyIdOf(key),
  };
  return { ...full, signature: mac(CheckpointBody.parse(full), key).toString('base64url') };
}

export class CheckpointRefusedError extends Error {
  readonly code = 'CHECKPOINT_REFUSED';
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointRefusedError';
  }
}

/**
 * Parses and authenticates a checkpoint for `userId`; throws CheckpointRefusedError when it is not
 * a checkpoint, is signed under another key, was altered or forged, or is about another user.
 */
export function openCheckpoint(value: unknown, key: string, userId: string): Checkpoint {
  const parsed = Checkpoint.safeParse(value);
  if (!parsed.success) {
    throw new CheckpointRefusedError(
      `not a checkpoint: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`,
    );
  }
  const { signature, ...body } = parsed.data;
  if (body.keyId !== keyIdOf(key)) {
    throw new CheckpointRefusedError(
      `the checkpoint was signed with another key (key id ${body.keyId}, ours is ${keyIdOf(key)})`,
    );
  }
  const given = Buffer.from(signature, 'base64url');
  const expected = mac(body, key);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    throw new CheckpointRefusedError(
      'the checkpoint signature does not match its content: it was altered or forged',
    );
  }
  if (body.userId !== userId) {
    throw new CheckpointRefusedError(`the checkpoint is for user ${body.userId}, not ${userId}`);
  }
  return parsed.data;
}
