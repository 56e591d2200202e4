import { checkJsonShape, ClientMessage } from '../../contracts/index.ts';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import type { Grant } from './tickets.ts';

export type Inbound = ClientMessage;

export type ParsedInbound = { ok: true; message: Inbound } | { ok: false; problem: string };

/** A client's text frame to a message, or why it is refused. */
export function parseClientMessage(text: string): ParsedInbound {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { ok: false, problem: 'the frame is not JSON' };
  }
  const shape = checkJsonShape(value, 4);
  if (shape) return { ok: false, problem: `${shape.path}: ${shape.problem}` };
  const message = ClientMessage.safeParse(value);
  if (message.success) return { ok: true, message: message.data };
  const issue = message.error.issues[0];
  return {
    ok: false,
    problem: `not a known message (${issue ? `${issue.path.join('.') || 'message'}: ${issue.message}` : 'unknown shape'})`,
  };
}

/**
 * Verifies a user token and reads its expiry, which bounds how long a socket opened with it may
 * stay open. Errors are `AuthError`s, which never contain the token.
 */
export async function authenticate(verifier: TokenVerifier, token: string | undefined): Promise<Grant> {
  const principal = await verifier.verify(token);
  if (principal.expiresAt === undefined) throw new AuthError('token has no expiry', 'invalid');
  return { principal, expiresAt: principal.expiresAt };
}
