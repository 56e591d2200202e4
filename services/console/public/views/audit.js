import { api, errorText } from '../api.js';
import { facts, field, fmtTime, h, json } from '../dom.js';

/**
 * A user's history verified end to end by the auditor (GET /audit/users/:userId/verify, role
 * auditor or admin): the hash chain, revisions and life cycles of every event. The access is
 * recorded in the auditor's log.
 */
export function render(main, { query: params, say }) {
  const user = h('input', {
    id: 'audit-user',
    name: 'userId',
    required: true,
    autocomplete: 'off',
    value: params.get('user') ?? '',
  });
  const result = h('div', { id: 'audit-result', 'aria-live': 'polite' });
  const button = h('button', { type: 'submit' }, 'Verify history');
  const form = h(
    'form',
    {
      id: 'audit',
      'aria-label': "Verify a user's history",
      onsubmit: async (e) => {
        e.preventDefault();
        const userId = user.value.trim();
        if (!userId) return;
        button.disabled = true;
        result.replaceChildren(h('p', { class: 'muted' }, `Verifying ${userId}'s history…`));
        const r = await api(`/audit/users/${encodeURIComponent(userId)}/verify`);
        button.disabled = false;
        if (!r.ok) {
          result.replaceChildren();
          say(errorText(r), 'error');
          return;
        }
        say('');
        result.replaceChildren(reportOf(r.body));
      },
    },
    field('User', user),
    h('div', { class: 'actions' }, button),
  );
  main.append(h('h2', {}, 'Audit verification'), form, result);
}

function verdictOf(report) {
  if (!report.ok) return `✗ ${report.userId}'s history is broken`;
  // An empty history verifies, but it is more often a mistyped user id (ids are case-sensitive).
  if (report.events === 0) return `Nothing to verify: ${report.userId} has no events (is the user id right?)`;
  return `✓ ${report.userId}'s history verifies`;
}

function reportOf(report) {
  return h(
    'section',
    { class: `report ${report.ok ? 'ok' : 'broken'}`, dataset: { ok: String(report.ok) } },
    h('p', { class: 'verdict' }, verdictOf(report)),
    facts([
      ['Events checked', String(report.events)],
      ['Last revision', String(report.lastRevision)],
      [
        'Executions',
        `${report.executions.started} started, ${report.executions.ended} ended, ${report.executions.open} open`,
      ],
      ['Verified', fmtTime(report.finishedAt)],
    ]),
    report.break ? [h('h3', {}, 'Where it breaks'), json(report.break)] : null,
  );
}
