import { api, errorText, query } from '../api.js';
import { field, fmtMs, fmtTime, h, LIVE_INTERVAL_MS, poll, shownStatus } from '../dom.js';

/** The read model's statuses, and `cancelled`: a failure with code CANCELLED (`upstreamFilters`). */
const STATUSES = [
  'requested',
  'awaiting_approval',
  'approved',
  'executing',
  'completed',
  'failed',
  'cancelled',
];

/** The projector's query for the filters: `cancelled` is `failed` with code CANCELLED there. */
const upstreamFilters = (filters) =>
  filters.status === 'cancelled' ? { ...filters, status: 'failed', code: 'CANCELLED' } : filters;
/** Executions a page, unless the address says `limit=` (1-500, as the projector allows). */
const PAGE_SIZE = 25;

/** `2026-12-05T04:30` from a datetime-local input as an ISO instant (the browser's time zone). */
const isoOf = (local) => (local ? new Date(local).toISOString() : '');
/** And back, for the input's value. */
function localOf(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/**
 * Executions across users, newest first, filtered by user, tool, status and time, a page at a time
 * (the projector's cursor). The first page is live: it is read again every LIVE_INTERVAL_MS, so
 * new executions and status changes appear on their own; later pages stay as read.
 */
export function render(main, { query: params, say, go }) {
  const asked = Number(params.get('limit'));
  const pageSize = Number.isInteger(asked) && asked >= 1 && asked <= 500 ? asked : PAGE_SIZE;
  const filters = {
    userId: params.get('userId') ?? '',
    tool: params.get('tool') ?? '',
    status: params.get('status') ?? '',
    from: params.get('from') ?? '',
    to: params.get('to') ?? '',
  };
  // The cursors of the pages before this one, to go back; null is the first page.
  const cursors = [null];
  const cursor = () => cursors[cursors.length - 1];

  const user = h('input', { id: 'f-user', name: 'userId', value: filters.userId, autocomplete: 'off' });
  const tool = h('input', { id: 'f-tool', name: 'tool', value: filters.tool, autocomplete: 'off' });
  const status = h(
    'select',
    { id: 'f-status', name: 'status' },
    h('option', { value: '' }, 'any'),
    STATUSES.map((s) => h('option', { value: s, selected: s === filters.status }, s.replace('_', ' '))),
  );
  const from = h('input', {
    id: 'f-from',
    name: 'from',
    type: 'datetime-local',
    value: localOf(filters.from),
  });
  const to = h('input', { id: 'f-to', name: 'to', type: 'datetime-local', value: localOf(filters.to) });
  const form = h(
    'form',
    {
      id: 'filters',
      class: 'filters',
      'aria-label': 'Filter executions',
      onsubmit: (e) => {
        e.preventDefault();
        const q = query({
          userId: user.value.trim(),
          tool: tool.value.trim(),
          status: status.value,
          from: isoOf(from.value),
          to: isoOf(to.value),
        });
        go(`#/executions${q}`);
      },
    },
    field('User', user),
    field('Tool', tool),
    field('Status', status),
    field('From', from),
    field('To', to),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit' }, 'Apply filters'),
      h('button', { type: 'button', class: 'secondary', onclick: () => go('#/executions') }, 'Clear'),
    ),
  );

  const tbody = h('tbody');
  const live = h('span', { id: 'live', class: 'muted', 'aria-live': 'off' });
  const prev = h('button', { type: 'button', class: 'secondary', id: 'prev-page', disabled: true }, 'Newer');
  const next = h('button', { type: 'button', class: 'secondary', id: 'next-page', disabled: true }, 'Older');
  let nextCursor = null;

  main.append(
    h('h2', {}, 'Executions ', live),
    form,
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { id: 'executions' },
        h('caption', { class: 'visually-hidden' }, 'Executions, newest first'),
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            ['Requested', 'User', 'Tool', 'Status', 'Duration', 'Attempts', 'Error'].map((c) =>
              h('th', { scope: 'col' }, c),
            ),
          ),
        ),
        tbody,
      ),
    ),
    h('div', { class: 'pager' }, prev, next),
  );

  async function load() {
    const r = await api(
      `/executions${query({ ...upstreamFilters(filters), limit: pageSize, cursor: cursor() })}`,
    );
    if (!r.ok) {
      say(errorText(r), 'error');
      return;
    }
    nextCursor = r.body.nextCursor;
    next.disabled = nextCursor === null;
    prev.disabled = cursors.length === 1;
    live.textContent =
      cursors.length === 1
        ? `(live, updated ${new Date().toLocaleTimeString()})`
        : '(an older page: not live)';
    tbody.replaceChildren(...r.body.items.map(rowOf));
    if (r.body.items.length === 0) {
      tbody.append(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No executions match.')));
    }
  }

  let stopLive = poll(load, LIVE_INTERVAL_MS);
  const page = (move) => {
    stopLive();
    move();
    stopLive = cursors.length === 1 ? poll(load, LIVE_INTERVAL_MS) : (void load(), () => {});
  };
  next.addEventListener('click', () => page(() => cursors.push(nextCursor)));
  prev.addEventListener('click', () => page(() => cursors.pop()));
  return () => stopLive();
}

function rowOf(e) {
  const href = `#/executions/${e.executionId}${query({ user: e.userId })}`;
  const label = `Open ${e.tool} of ${e.userId} at ${fmtTime(e.requestedAt)}`;
  return h(
    'tr',
    { dataset: { executionId: e.executionId, status: e.status, user: e.userId } },
    cell('Requested', h('a', { href, 'aria-label': label }, fmtTime(e.requestedAt))),
    cell('User', e.userId),
    cell('Tool', `${e.tool}${e.version ? ` ${e.version}` : ''}`),
    cell(
      'Status',
      h(
        'span',
        { class: `status ${shownStatus(e.status, e.error?.code)}` },
        shownStatus(e.status, e.error?.code).replace('_', ' '),
      ),
    ),
    cell('Duration', fmtMs(e.durationMs)),
    cell('Attempts', String(e.attempts)),
    e.error ? cell('Error', `${e.error.code}: ${e.error.message ?? ''}`) : h('td'),
  );
}

/** A cell that names its column (shown before it when a phone stacks the row). */
const cell = (label, content) => h('td', { 'data-label': label }, content);
