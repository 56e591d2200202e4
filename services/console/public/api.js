/**
 * Calls to the console's /api (forwarded with the token to the dispatcher, projector or auditor).
 * Resolves `{ ok, status, body }`; an error's text is `errorText(result)`, whatever service said it.
 */
let token = null;
let onUnauthenticated = () => {};

export function useToken(t, whenRefused) {
  token = t;
  onUnauthenticated = whenRefused;
}

export async function api(path, { method = 'GET', body } = {}) {
  let res;
  try {
    res = await fetch(`/api${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
  } catch {
    return { ok: false, status: 0, body: { error: { message: 'the console is not reachable' } } };
  }
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { error: { message: text } };
  }
  if (res.status === 401) onUnauthenticated(errorText({ body: parsed }));
  return { ok: res.ok, status: res.status, body: parsed };
}

/** The message of an error answer: `{error: {code, message}}`, every service's shape. */
export function errorText({ status, body }) {
  const code = body?.error?.code;
  const message = body?.error?.message ?? 'request failed';
  return `${code ? `${code}: ` : ''}${message}${status ? ` (HTTP ${status})` : ''}`;
}

/** `?a=1&b=2` from the defined, non-empty entries. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}
