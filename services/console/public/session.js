/**
 * Who is signed in: the token comes from `#token=…` (then removed from the address bar, as the
 * live page does), the sign-in form, or this tab's session storage. The console never checks it:
 * each service does, on every call. Its claims are read only to say who is signed in.
 */
/** The sessionStorage item that holds the signed-in token (an item name, not a secret). */
const TOKEN_ITEM = 'toolbus-console-token';

export function takeTokenFromAddress() {
  const m = /^#token=([A-Za-z0-9._-]+)$/.exec(location.hash);
  if (!m) return null;
  history.replaceState(null, '', `${location.pathname}${location.search}#/executions`);
  return m[1];
}

export const savedToken = () => sessionStorage.getItem(TOKEN_ITEM);
export const saveToken = (token) => sessionStorage.setItem(TOKEN_ITEM, token);
export const forgetToken = () => sessionStorage.removeItem(TOKEN_ITEM);

/** The token's claims (sub, roles, exp), unverified; null when it is not a JWT. */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(part));
    return { sub: String(claims.sub ?? '?'), roles: Array.isArray(claims.roles) ? claims.roles : [] };
  } catch {
    return null;
  }
}
