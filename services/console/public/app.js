import { api, useToken } from './api.js';
import { LIVE_INTERVAL_MS, poll } from './dom.js';
import { claimsOf, forgetToken, saveToken, savedToken, takeTokenFromAddress } from './session.js';
import * as executions from './views/executions.js';
import * as execution from './views/execution.js';
import * as approvals from './views/approvals.js';
import * as metrics from './views/metrics.js';
import * as audit from './views/audit.js';

/**
 * The console's shell: sign-in, the section links, and a hash router (`#/executions`,
 * `#/executions/<id>?user=<userId>`, `#/approvals`, `#/metrics`, `#/audit`). Each view's
 * `render(main, ctx)` returns a function that stops its polling when another view replaces it.
 */
const $ = (id) => document.getElementById(id);
const main = $('view');
let stopView = () => {};
let stopBadge = () => {};

function say(message, kind = 'info') {
  $('status').textContent = message;
  $('status').dataset.kind = kind;
}

function signIn(token) {
  const claims = claimsOf(token);
  if (!claims) {
    say('That is not a token (a JWT has three dot-separated parts).', 'error');
    return false;
  }
  saveToken(token);
  useToken(token, (why) => {
    signOut();
    say(`Signed out: ${why}`, 'error');
  });
  $('user').textContent = claims.sub;
  $('roles').textContent = claims.roles.length ? `(${claims.roles.join(', ')})` : '(no roles)';
  $('who').hidden = false;
  $('nav').hidden = false;
  $('login').hidden = true;
  stopBadge = poll(refreshBadge, LIVE_INTERVAL_MS);
  return true;
}

function signOut() {
  forgetToken();
  stopView();
  stopBadge();
  stopView = stopBadge = () => {};
  main.replaceChildren();
  $('who').hidden = true;
  $('nav').hidden = true;
  $('login').hidden = false;
  $('token').value = '';
  $('token').focus();
}

/** The number of calls waiting for the signed-in approver, beside the Approvals link. */
async function refreshBadge() {
  const r = await api('/approvals?limit=100');
  $('approvals-count').textContent =
    r.ok && r.body.approvals.length > 0 ? String(r.body.approvals.length) : '';
}

function route() {
  if (!savedToken()) return;
  const [path, search = ''] = location.hash.replace(/^#/, '').split('?');
  const parts = (path || '/executions').split('/').filter(Boolean);
  const ctx = { query: new URLSearchParams(search), say, go: (hash) => (location.hash = hash) };
  let view;
  if (parts[0] === 'executions' && parts[1]) view = () => execution.render(main, { ...ctx, id: parts[1] });
  else if (parts[0] === 'approvals') view = () => approvals.render(main, ctx);
  else if (parts[0] === 'metrics') view = () => metrics.render(main, ctx);
  else if (parts[0] === 'audit') view = () => audit.render(main, ctx);
  else view = () => executions.render(main, ctx);
  stopView();
  say('');
  main.replaceChildren();
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.section === parts[0]) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  stopView = view() ?? (() => {});
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  if (signIn($('token').value.trim())) route();
});
$('sign-out').addEventListener('click', () => {
  signOut();
  say('Signed out.');
});
window.addEventListener('hashchange', () => {
  route();
  // A keyboard user lands on the new view, not back at the top of the page.
  main.focus({ preventScroll: true });
});

const token = takeTokenFromAddress() ?? savedToken();
if (token && signIn(token)) route();
else signOut();
