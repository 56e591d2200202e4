import { api, errorText, query } from '../api.js';
import { field, fmtTime, h, json, LIVE_INTERVAL_MS, poll } from '../dom.js';

/**
 * The calls waiting for an approver the signed-in user may be (the dispatcher's GET /approvals),
 * oldest first, read again every LIVE_INTERVAL_MS. Each shows its arguments as stored and is
 * approved or denied with the hash of exactly those arguments. A card stays as built while it waits
 * (a reason being typed survives the refresh); only new and decided calls change the list.
 */
export function render(main, { say }) {
  const list = h('ul', { id: 'approvals', class: 'cards' });
  const empty = h(
    'p',
    { id: 'approvals-empty', class: 'muted', hidden: true },
    'No calls wait for your approval.',
  );
  main.append(h('h2', {}, 'Approvals'), empty, list);
  const cards = new Map();

  async function load() {
    const r = await api(`/approvals${query({ limit: 100 })}`);
    if (!r.ok) {
      say(
        r.status === 404 && !r.body?.error?.code ? 'This dispatcher has no approvals API.' : errorText(r),
        'error',
      );
      return;
    }
    const waiting = new Map(r.body.approvals.map((a) => [a.executionId, a]));
    for (const [id, card] of cards) {
      if (!waiting.has(id)) {
        card.remove();
        cards.delete(id);
      }
    }
    for (const [id, a] of waiting) {
      if (!cards.has(id)) {
        const card = cardOf(a, say, load);
        cards.set(id, card);
        list.append(card);
      }
    }
    empty.hidden = cards.size > 0;
  }
  return poll(load, LIVE_INTERVAL_MS);
}

function cardOf(a, say, reload) {
  const reason = h('input', {
    id: `reason-${a.executionId}`,
    name: 'reason',
    maxlength: 500,
    autocomplete: 'off',
  });
  const decide = async (verb, button) => {
    const text = reason.value.trim();
    if (verb === 'deny' && !text) {
      say('A denial needs a reason.', 'error');
      reason.focus();
      return;
    }
    button.disabled = true;
    const r = await api(`/executions/${a.executionId}/${verb}`, {
      method: 'POST',
      body: { argsHash: a.argsHash, ...(text ? { reason: text } : {}) },
    });
    button.disabled = false;
    say(
      r.ok ? `${verb === 'approve' ? 'Approved' : 'Denied'}: ${a.tool} for ${a.userId}.` : errorText(r),
      r.ok ? 'info' : 'error',
    );
    await reload();
  };
  const approve = h('button', { type: 'button', class: 'approve' }, 'Approve');
  const deny = h('button', { type: 'button', class: 'deny danger' }, 'Deny');
  approve.addEventListener('click', () => decide('approve', approve));
  deny.addEventListener('click', () => decide('deny', deny));
  const href = `#/executions/${a.executionId}${query({ user: a.userId })}`;
  return h(
    'li',
    { class: 'card', dataset: { executionId: a.executionId } },
    h('h3', {}, h('a', { href }, `${a.tool} ${a.version ?? ''}`), ' for ', a.userId),
    h(
      'p',
      { class: 'muted' },
      `Asked ${fmtTime(a.requestedAt)} · decide before ${fmtTime(a.deadline)} · approvers: ${a.approverRoles.join(', ')}`,
    ),
    json(a.args),
    h(
      'form',
      {
        class: 'decide',
        'aria-label': `Approve or deny ${a.tool} for ${a.userId}`,
        onsubmit: (e) => e.preventDefault(),
      },
      field('Reason (required to deny)', reason),
      h('div', { class: 'actions' }, approve, deny),
    ),
  );
}
