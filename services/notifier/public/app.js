import { ToolbusClient } from './toolbus-client.js';

/**
 * The live page: a user's executions as they happen (status, tool, duration, errors) and a chart
 * of recent latencies. The token comes from the form or the URL fragment (#token=…, which never
 * reaches a server) and is kept in memory only.
 */
const MAX_EXECUTIONS = 500;
const MAX_ROWS = 200;
const CHART_BARS = 40;
const SVG_NS = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);
/** executionId -> what the page knows of it, in order of first sight. */
const executions = new Map();
/** Durations of the most recent terminal executions: { ms, status }. */
let latencies = [];
let client = null;
let renderTimer = null;

function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  // Do not leave the token in the address bar or the history.
  if (token) history.replaceState(null, '', location.pathname + location.search);
  return token;
}

/** The user a token names, or null when it is not a JWT with a subject. */
function subjectOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const sub = JSON.parse(atob(part)).sub;
    return typeof sub === 'string' && sub ? sub : null;
  } catch {
    return null;
  }
}

function connect(token) {
  client?.stop();
  const user = subjectOf(token);
  if (user === null) {
    // Said at once: the notifier would only refuse it after a round trip, and "Watching ?" helps nobody.
    client = null;
    $('token').value = '';
    setConnection(
      'stopped',
      'that is not a user token (a JWT with a subject); make one with `npm run -s token -- <user>`',
    );
    return;
  }
  executions.clear();
  latencies = [];
  $('user').textContent = user;
  $('summary').hidden = false;
  $('chart-section').hidden = false;
  $('disconnect').hidden = false;
  $('token').value = '';
  render();

  client = new ToolbusClient({ token });
  client.addEventListener('state', (e) => setConnection(e.detail));
  client.addEventListener('event', (e) => apply(e.detail));
  client.addEventListener('progress', (e) => applyProgress(e.detail));
  client.addEventListener('servererror', (e) => console.warn('notifier:', e.detail.code, e.detail.message));
  client.addEventListener('failed', (e) => {
    // The token was refused (expired, forged, no access): nobody is being watched any more.
    $('user').textContent = `${user} (not watched)`;
    setConnection('stopped', e.detail.message);
  });
  client.start();
}

function setConnection(state, message) {
  const el = $('connection');
  el.dataset.state = state;
  const labels = {
    connecting: 'connecting…',
    open: 'catching up…',
    live: 'live',
    reconnecting: 'reconnecting…',
    stopped: 'disconnected',
    idle: 'not connected',
  };
  el.textContent = message ? `${labels[state] ?? state}: ${message}` : (labels[state] ?? state);
}

function apply(n) {
  const e = n.event;
  const id = e.metadata.executionId;
  let x = executions.get(id);
  if (!x) {
    x = {
      id,
      tool: '?',
      version: null,
      status: 'requested',
      startedAt: e.metadata.occurredAt,
      durationMs: null,
      error: null,
      attempt: 0,
      cached: false,
      progress: null,
    };
    executions.set(id, x);
    while (executions.size > MAX_EXECUTIONS) executions.delete(executions.keys().next().value);
  }
  x.revision = n.revision;
  switch (e.type) {
    case 'ToolRequested':
      x.tool = e.data.tool;
      x.version = e.data.version;
      x.startedAt = e.metadata.occurredAt;
      break;
    case 'ToolExecuting':
      x.status = 'executing';
      x.attempt = e.data.attempt;
      break;
    case 'ToolCompleted':
      x.status = 'completed';
      x.durationMs = e.data.durationMs;
      x.cached = e.data.cached;
      x.progress = null;
      latencies.push({ ms: e.data.durationMs, status: 'completed' });
      break;
    case 'ToolFailed':
      x.status = endedStatus(e.data.error.code);
      x.durationMs = e.data.durationMs;
      x.error = e.data.error;
      x.progress = null;
      if (e.data.durationMs !== null)
        latencies.push({ ms: e.data.durationMs, status: x.status === 'cancelled' ? 'cancelled' : 'failed' });
      break;
    // The facts that change an execution's course (contracts/execution.ts): shown as a status
    // until the execution runs or ends; a cancel asked for shows only through its end.
    case 'ToolApprovalRequested':
      x.status = 'awaiting_approval';
      x.approval = { roles: e.data.approverRoles, deadline: e.data.deadline };
      break;
    case 'ToolApproved':
      x.status = 'approved';
      x.approvedBy = e.data.approverId;
      break;
    case 'ToolDenied':
    case 'ToolCancelRequested':
      break;
    default:
  }
  if (latencies.length > CHART_BARS) latencies = latencies.slice(-CHART_BARS);
  $('revision').textContent = String(n.revision);
  scheduleRender();
}

/** A run that failed because its user cancelled it, or ran out of time, is shown as that. */
function endedStatus(code) {
  if (code === 'CANCELLED') return 'cancelled';
  if (code === 'TIMEOUT') return 'timed_out';
  return 'failed';
}

const ENDED = new Set(['completed', 'failed', 'cancelled', 'timed_out']);
const STATUS_LABELS = { timed_out: 'timed out', awaiting_approval: 'awaiting approval' };

function applyProgress(p) {
  const x = executions.get(p.executionId);
  if (!x || ENDED.has(x.status)) return;
  x.progress = { fraction: p.fraction, message: p.message ?? '' };
  scheduleRender();
}

function scheduleRender() {
  if (renderTimer === null) renderTimer = setTimeout(render, 30);
}

function formatDuration(ms) {
  if (ms === null || ms === undefined) return '—';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

const TIME_FORMAT = new Intl.DateTimeFormat(undefined, {
  year: 'numeric',
  month: 'short',
  day: 'numeric',
  hour: '2-digit',
  minute: '2-digit',
  second: '2-digit',
});

/** The date and the time, in the reader's locale and time zone (a page stays open for days). */
function formatTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : TIME_FORMAT.format(d);
}

function render() {
  renderTimer = null;
  const rows = [...executions.values()].reverse().slice(0, MAX_ROWS);
  const body = document.createElement('tbody');
  for (const x of rows) {
    const tr = document.createElement('tr');
    tr.dataset.executionId = x.id;
    tr.dataset.status = x.status;
    const cell = (text, className) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (className) td.className = className;
      tr.append(td);
      return td;
    };
    cell(formatTime(x.startedAt), 'started').title = x.startedAt;
    cell(x.version ? `${x.tool} ${x.version}` : x.tool, 'tool');
    const status = cell('');
    const badge = document.createElement('span');
    badge.className = 'status';
    badge.textContent = STATUS_LABELS[x.status] ?? x.status;
    status.append(badge);
    cell(formatDuration(x.durationMs), 'duration');
    const details = cell('', 'details');
    if ((x.status === 'failed' || x.status === 'timed_out' || x.status === 'cancelled') && x.error) {
      details.textContent = `${x.error.code}: ${x.error.message}`;
      if (x.status !== 'cancelled') details.classList.add('error');
    } else if (x.status === 'completed') {
      details.textContent = x.cached ? 'cached result' : '';
    } else if (x.status === 'awaiting_approval' && x.approval) {
      details.textContent = `awaits approval (${x.approval.roles.join(' or ')}) until ${formatTime(x.approval.deadline)}`;
    } else if (x.status === 'approved') {
      details.textContent = `approved by ${x.approvedBy}; starting`;
    } else if (x.status === 'executing') {
      details.textContent = x.attempt > 1 ? `attempt ${x.attempt} ` : '';
      if (x.progress) {
        const bar = document.createElement('progress');
        bar.max = 1;
        bar.value = x.progress.fraction;
        details.append(bar, ` ${x.progress.message}`);
      }
    }
    body.append(tr);
  }
  $('executions').tBodies[0].replaceWith(body);
  $('empty').hidden = executions.size > 0;

  const counts = { completed: 0, failed: 0, cancelled: 0, running: 0 };
  for (const x of executions.values()) {
    if (x.status === 'completed') counts.completed++;
    else if (x.status === 'cancelled') counts.cancelled++;
    else if (ENDED.has(x.status))
      counts.failed++; // failed or timed out
    else counts.running++;
  }
  $('counts').textContent =
    `${counts.running} running, ${counts.completed} completed, ${counts.failed} failed` +
    (counts.cancelled > 0 ? `, ${counts.cancelled} cancelled` : '');
  renderChart();
}

function renderChart() {
  const svg = $('latency');
  const width = 600;
  const height = 140;
  const top = 14;
  svg.replaceChildren();
  if (latencies.length === 0) {
    $('chart-caption').textContent = 'No finished executions yet.';
    return;
  }
  const max = Math.max(...latencies.map((l) => l.ms), 1);
  const slot = width / CHART_BARS;
  const el = (name, attrs) => {
    const node = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  };
  svg.append(el('line', { x1: 0, y1: top, x2: width, y2: top }));
  const label = el('text', { x: 4, y: 10 });
  label.textContent = formatDuration(max);
  svg.append(label);
  latencies.forEach((l, i) => {
    const h = Math.max(1, ((height - top) * l.ms) / max);
    const rect = el('rect', {
      x: i * slot + 1,
      y: height - h,
      width: Math.max(1, slot - 2),
      height: h,
      class: l.status,
    });
    const title = el('title', {});
    title.textContent = `${l.status}: ${formatDuration(l.ms)}`;
    rect.append(title);
    svg.append(rect);
  });
  const sorted = latencies.map((l) => l.ms).sort((a, b) => a - b);
  const p50 = sorted[Math.floor((sorted.length - 1) / 2)];
  $('chart-caption').textContent =
    `Last ${latencies.length}: median ${formatDuration(p50)}, max ${formatDuration(max)}`;
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('token').value.trim();
  if (token) connect(token);
});
$('disconnect').addEventListener('click', () => {
  client?.stop();
  client = null;
  $('disconnect').hidden = true;
});

const fromFragment = tokenFromFragment();
if (fromFragment) connect(fromFragment);
// A `#token=` link opened in a tab that already shows the page does not reload it.
window.addEventListener('hashchange', () => {
  const token = tokenFromFragment();
  if (token) connect(token);
});
