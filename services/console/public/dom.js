/** Small DOM helpers: elements are built with text nodes only (no innerHTML), so no data is markup. */

/**
 * `h('button', { type: 'button', onclick }, 'Cancel')`: attributes (`on*` become listeners,
 * `dataset` an object, false/null/undefined are left out) and children (strings, nodes, arrays).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export const clear = (el) => el.replaceChildren();

export const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : '–');

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return '–';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

export const fmtRate = (r) => (r === null || r === undefined ? '–' : `${(r * 100).toFixed(1)} %`);

/** JSON shown as it was stored (redacted fields read "[REDACTED]"). */
export const json = (value) => h('pre', { class: 'json' }, JSON.stringify(value, null, 2));

/** A label and its control, the label tied to the control by id. */
export function field(label, control) {
  return h('div', { class: 'field' }, h('label', { for: control.id }, label), control);
}

/** `<dl>` of [term, description] pairs. */
export const facts = (pairs) =>
  h(
    'dl',
    { class: 'facts' },
    pairs.filter(Boolean).map(([term, value]) => [h('dt', {}, term), h('dd', {}, value)]),
  );

/** How often the live parts (executions, approvals, an open execution) are read again. */
export const LIVE_INTERVAL_MS = 2000;

/**
 * Runs `fn` now and again `ms` after each run ends (never two at once), until the returned stop
 * function is called. The console's live parts poll this way (decision 0023).
 */
export function poll(fn, ms) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    if (stopped) return;
    try {
      await fn();
    } finally {
      if (!stopped) timer = setTimeout(run, ms);
    }
  };
  void run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/**
 * The status as a person reads it: a failure with code CANCELLED is shown `cancelled`, as the live
 * page shows it (the read model's status stays `failed`, which the filter uses).
 */
export function shownStatus(status, errorCode) {
  return status === 'failed' && errorCode === 'CANCELLED' ? 'cancelled' : status;
}
