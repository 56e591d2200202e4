import { api, errorText, query } from '../api.js';
import { facts, field, fmtMs, fmtTime, h, json, LIVE_INTERVAL_MS, poll, shownStatus } from '../dom.js';

const TERMINAL = new Set(['completed', 'failed']);

/**
 * One execution: its summary (projector), and its events as the store holds them (dispatcher,
 * redacted as stored): arguments, result or error, attempts, who approved or denied, the whole
 * timeline. Cancel, approve and deny act on it. Read again every LIVE_INTERVAL_MS until it ends;
 * the controls are built once and only shown or hidden, so a reason being typed is never lost.
 */
export function render(main, { id, query: params, say }) {
  let userId = params.get('user');
  let current = null; // { status, approval: { argsHash } | null }

  const title = h('h2', { id: 'execution-title' }, `Execution ${id}`);
  const summary = h('div', { id: 'summary' });
  const approvalInfo = h('div', { id: 'approval' });
  const args = h('div', { id: 'arguments' });
  const outcome = h('div', { id: 'outcome' });
  const timeline = h('ol', { id: 'timeline', class: 'timeline' });

  const cancelButton = h(
    'button',
    { type: 'button', id: 'cancel', class: 'danger', hidden: true },
    'Cancel execution',
  );
  const reason = h('input', { id: 'decision-reason', name: 'reason', maxlength: 500, autocomplete: 'off' });
  const approveButton = h('button', { type: 'button', id: 'approve' }, 'Approve');
  const denyButton = h('button', { type: 'button', id: 'deny', class: 'danger' }, 'Deny');
  const decide = h(
    'form',
    {
      id: 'decide',
      class: 'decide',
      hidden: true,
      'aria-label': 'Approve or deny this call',
      onsubmit: (e) => e.preventDefault(),
    },
    field('Reason (required to deny)', reason),
    h('div', { class: 'actions' }, approveButton, denyButton),
  );

  main.append(
    h('p', {}, h('a', { href: '#/executions' }, '← All executions')),
    title,
    summary,
    h('div', { class: 'actions', id: 'execution-actions' }, cancelButton),
    decide,
    h('h3', {}, 'Approval'),
    approvalInfo,
    h('h3', {}, 'Arguments'),
    args,
    h('h3', {}, 'Outcome'),
    outcome,
    h('h3', {}, 'Timeline'),
    timeline,
  );

  async function load() {
    const row = await api(`/executions/${id}`);
    if (row.ok) userId = row.body.userId;
    else if (row.status !== 404 || !userId) {
      say(errorText(row), 'error');
      return;
    }
    const stored = await api(`/executions/${id}/events${query({ userId })}`);
    if (!stored.ok) {
      say(errorText(stored), 'error');
      return;
    }
    show(row.ok ? row.body : null, stored.body);
    return TERMINAL.has(stored.body.status);
  }

  function show(view, stored) {
    const events = stored.events;
    const requested = events.find((e) => e.type === 'ToolRequested');
    const asked = events.findLast((e) => e.type === 'ToolApprovalRequested');
    const decided = events.findLast((e) => e.type === 'ToolApproved' || e.type === 'ToolDenied');
    const attempts = events.filter((e) => e.type === 'ToolExecuting');
    const cancel = events.find((e) => e.type === 'ToolCancelRequested');
    const failed = events.findLast((e) => e.type === 'ToolFailed');
    const status = shownStatus(stored.status, failed?.data.error.code);
    current = { status: stored.status, approval: asked && !decided ? asked.data : null };

    title.textContent = `${stored.tool}${stored.version ? ` ${stored.version}` : ''} for ${userId}`;
    main.dataset.status = stored.status;
    summary.replaceChildren(
      facts([
        [
          'Status',
          h('span', { class: `status ${status}`, id: 'execution-status' }, status.replace('_', ' ')),
        ],
        ['User', userId],
        ['Execution', id],
        ['Request', stored.requestId],
        ['Requested', fmtTime(requested?.metadata.occurredAt)],
        ['Attempts', String(attempts.length)],
        view && ['Duration', fmtMs(view.durationMs)],
        cancel && ['Cancel asked', `${fmtTime(cancel.data.requestedAt)} by ${cancel.data.by.userId}`],
      ]),
    );
    approvalInfo.replaceChildren(
      !asked
        ? h('p', { class: 'muted' }, 'This call needed no approval.')
        : facts([
            ['Approver roles', asked.data.approverRoles.join(', ')],
            ['Deadline', fmtTime(asked.data.deadline)],
            [
              'Decision',
              h(
                'span',
                { id: 'decision' },
                decided
                  ? `${decided.type === 'ToolApproved' ? 'approved' : 'denied'} by ${decided.data.approverId} (${decided.data.approverRole})` +
                      `${decided.data.reason ? `: ${decided.data.reason}` : ''}`
                  : 'waiting',
              ),
            ],
          ]),
    );
    args.replaceChildren(
      h(
        'div',
        {},
        !requested
          ? h('p', { class: 'muted' }, 'Not recorded.')
          : requested.data.argsOmitted
            ? h(
                'p',
                { class: 'muted' },
                `Not stored (the request was refused): ${requested.data.argsOmitted.bytes} bytes, SHA-256 ${requested.data.argsOmitted.sha256}`,
              )
            : json(requested.data.args),
        requested?.data.redacted.length > 0 &&
          h('p', { class: 'muted' }, `Redacted when stored: ${requested.data.redacted.join(', ')}`),
      ),
    );
    const end = events.findLast((e) => e.type === 'ToolCompleted' || e.type === 'ToolFailed');
    outcome.replaceChildren(
      !end
        ? h('p', { class: 'muted' }, 'Not ended yet.')
        : end.type === 'ToolCompleted'
          ? h(
              'div',
              {},
              h('p', {}, `Completed in ${fmtMs(end.data.durationMs)}${end.data.cached ? ' (cached)' : ''}`),
              json(end.data.result),
            )
          : h(
              'div',
              {},
              h('p', { class: 'error', id: 'error' }, `${end.data.error.code}: ${end.data.error.message}`),
              end.data.error.details ? json(end.data.error.details) : null,
            ),
    );
    timeline.replaceChildren(...events.map(timelineItem));

    cancelButton.hidden = TERMINAL.has(stored.status);
    decide.hidden = current.approval === null;
  }

  async function act(button, path, body, done) {
    button.disabled = true;
    const r = await api(`/executions/${id}/${path}`, { method: 'POST', body });
    button.disabled = false;
    say(r.ok ? done(r.body) : errorText(r), r.ok ? 'info' : 'error');
    await load();
  }
  cancelButton.addEventListener('click', () =>
    act(cancelButton, 'cancel', { userId }, (b) =>
      b.cancelled ? 'Cancelled.' : (b.message ?? 'Cancel requested.'),
    ),
  );
  approveButton.addEventListener('click', () => {
    if (!current?.approval) return;
    const r = reason.value.trim();
    act(
      approveButton,
      'approve',
      { argsHash: current.approval.argsHash, ...(r ? { reason: r } : {}) },
      () => 'Approved.',
    );
  });
  denyButton.addEventListener('click', () => {
    if (!current?.approval) return;
    if (!reason.value.trim()) {
      say('A denial needs a reason.', 'error');
      reason.focus();
      return;
    }
    act(
      denyButton,
      'deny',
      { argsHash: current.approval.argsHash, reason: reason.value.trim() },
      () => 'Denied.',
    );
  });

  let ended = false;
  return poll(async () => {
    if (!ended) ended = (await load()) === true;
  }, LIVE_INTERVAL_MS);
}

/** One event of the timeline: when, what, and its data as stored. */
function timelineItem(e) {
  return h(
    'li',
    { dataset: { type: e.type } },
    h('time', { datetime: e.metadata.occurredAt }, fmtTime(e.metadata.occurredAt)),
    ' ',
    h('strong', {}, e.type),
    ' ',
    h('span', { class: 'muted' }, describe(e)),
    h('details', {}, h('summary', {}, 'Event data'), json({ id: e.id, data: e.data, hash: e.metadata.hash })),
  );
}

function describe(e) {
  switch (e.type) {
    case 'ToolRequested':
      return `${e.data.tool} ${e.data.version ?? '(unknown version)'}`;
    case 'ToolExecuting':
      return `attempt ${e.data.attempt} on ${e.data.runner}, timeout ${fmtMs(e.data.timeoutMs)}`;
    case 'ToolCompleted':
      return `in ${fmtMs(e.data.durationMs)}`;
    case 'ToolFailed':
      return `${e.data.error.code}: ${e.data.error.message}`;
    case 'ToolCancelRequested':
      return `by ${e.data.by.userId}${e.data.reason ? `: ${e.data.reason}` : ''}`;
    case 'ToolApprovalRequested':
      return `by ${e.data.approverRoles.join(' or ')} before ${fmtTime(e.data.deadline)}`;
    case 'ToolApproved':
    case 'ToolDenied':
      return `by ${e.data.approverId} (${e.data.approverRole})${e.data.reason ? `: ${e.data.reason}` : ''}`;
    default:
      return '';
  }
}
