import uPlot from '/vendor/uPlot.esm.js';
import { api, errorText, query } from '../api.js';
import { field, fmtMs, fmtRate, h, poll } from '../dom.js';

const WINDOWS = [
  ['15', 'last 15 minutes'],
  ['60', 'last hour'],
  ['360', 'last 6 hours'],
  ['1440', 'last 24 hours'],
];
const REFRESH_MS = 10_000;
const COLORS = {
  completed: '#1b7f4b',
  failed: '#c0392b',
  p50: '#2f5bd3',
  p95: '#d68a00',
  p99: '#8e44ad',
  rate: '#c0392b',
};

/**
 * Per tool, over a chosen window: a table of the totals (projector GET /tools/metrics) and three
 * uPlot charts per minute (GET /tools/metrics/series): throughput (completed and failed), latency
 * percentiles (p50, p95, p99) and error rate. Minutes without activity count 0 executions and
 * have no latency or rate (a gap in the line). Read again every REFRESH_MS.
 */
export function render(main, { say }) {
  const windowSelect = h(
    'select',
    { id: 'metrics-window', name: 'window' },
    WINDOWS.map(([v, label]) => h('option', { value: v, selected: v === '60' }, label)),
  );
  const table = h('div', { id: 'metrics-table', class: 'table-wrap' });
  const charts = h('div', { id: 'charts' });
  main.append(
    h('h2', {}, 'Tool metrics'),
    h(
      'form',
      { class: 'filters', 'aria-label': 'Metrics window', onsubmit: (e) => e.preventDefault() },
      field('Window', windowSelect),
    ),
    table,
    charts,
  );
  let plots = [];

  async function load() {
    const minutes = Number(windowSelect.value);
    const to = new Date();
    const from = new Date(to.getTime() - minutes * 60_000);
    const range = { from: from.toISOString(), to: to.toISOString() };
    const [totals, series] = await Promise.all([
      api(`/tools/metrics${query(range)}`),
      api(`/tools/metrics/series${query(range)}`),
    ]);
    if (!totals.ok || !series.ok) {
      say(errorText(totals.ok ? series : totals), 'error');
      return;
    }
    table.replaceChildren(totalsTable(totals.body.tools));
    for (const p of plots) p.destroy();
    plots = [];
    const width = Math.max(260, Math.min(charts.clientWidth || 600, 900) - 8);
    charts.replaceChildren(
      ...series.body.tools.map((s) => {
        const section = h(
          'section',
          { class: 'tool-charts', dataset: { tool: s.tool } },
          h('h3', {}, s.tool),
        );
        const data = columns(s.points, from, to);
        plots.push(
          chart(
            section,
            `Throughput (executions per minute)`,
            width,
            [data.x, data.completed, data.failed],
            [
              { label: 'completed', stroke: COLORS.completed },
              { label: 'failed', stroke: COLORS.failed },
            ],
          ),
          chart(
            section,
            'Latency (ms)',
            width,
            [data.x, data.p50, data.p95, data.p99],
            [
              { label: 'p50', stroke: COLORS.p50, points: true },
              { label: 'p95', stroke: COLORS.p95, points: true },
              { label: 'p99', stroke: COLORS.p99, points: true },
            ],
          ),
          chart(
            section,
            'Error rate (%)',
            width,
            [data.x, data.rate],
            [{ label: 'error rate', stroke: COLORS.rate, points: true }],
          ),
        );
        return section;
      }),
    );
    if (series.body.tools.length === 0)
      charts.append(h('p', { class: 'muted' }, 'No tool ran in this window.'));
  }

  let stop = poll(load, REFRESH_MS);
  windowSelect.addEventListener('change', () => {
    stop();
    stop = poll(load, REFRESH_MS);
  });
  return () => {
    stop();
    for (const p of plots) p.destroy();
  };
}

/** The minute points as uPlot's columns: one x per minute of the window, gaps filled. */
function columns(points, from, to) {
  const byMinute = new Map(points.map((p) => [Math.floor(Date.parse(p.minute) / 60_000), p]));
  const out = { x: [], completed: [], failed: [], p50: [], p95: [], p99: [], rate: [] };
  for (let m = Math.floor(from.getTime() / 60_000); m <= Math.floor(to.getTime() / 60_000); m++) {
    const p = byMinute.get(m);
    out.x.push(m * 60);
    out.completed.push(p?.completed ?? 0);
    out.failed.push(p?.failed ?? 0);
    out.p50.push(p?.latencyMs.p50 ?? null);
    out.p95.push(p?.latencyMs.p95 ?? null);
    out.p99.push(p?.latencyMs.p99 ?? null);
    out.rate.push(p?.errorRate === null || p?.errorRate === undefined ? null : p.errorRate * 100);
  }
  return out;
}

/** A y-axis tick short enough for the axis: 950, 9,500, 20k, 1.5M. */
function compactTick(v) {
  if (v === null || v === undefined) return '';
  const abs = Math.abs(v);
  if (abs >= 999_950) return `${+(v / 1e6).toFixed(1)}M`;
  if (abs >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
  return v.toLocaleString('en-US');
}

function chart(section, title, width, data, series) {
  const target = h('figure', { class: 'chart', 'aria-label': title });
  section.append(target);
  return new uPlot(
    {
      title,
      width,
      height: 180,
      series: [
        {},
        ...series.map((s) => ({
          ...s,
          width: 2,
          spanGaps: false,
          points: { show: s.points ?? false, size: 6 },
        })),
      ],
      scales: { y: { range: (_u, min, max) => [0, Math.max(1, max ?? 1)] } },
      // uPlot's y axis is 50 px wide: "20,000" did not fit. Large ticks are written 20k.
      axes: [{}, { values: (_u, ticks) => ticks.map(compactTick) }],
    },
    data,
    target,
  );
}

function totalsTable(tools) {
  return h(
    'table',
    { id: 'tool-totals' },
    h('caption', {}, 'Totals over the window'),
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        ['Tool', 'Ran', 'Failed', 'Refused', 'Error rate', 'p50', 'p95', 'p99'].map((c) =>
          h('th', { scope: 'col' }, c),
        ),
      ),
    ),
    h(
      'tbody',
      {},
      tools.map((t) =>
        h(
          'tr',
          { dataset: { tool: t.tool } },
          h('th', { scope: 'row' }, t.tool),
          h('td', {}, String(t.completed + t.failed)),
          h('td', {}, String(t.failed)),
          h('td', {}, String(t.refused)),
          h('td', {}, fmtRate(t.errorRate)),
          h('td', {}, fmtMs(t.latencyMs.p50)),
          h('td', {}, fmtMs(t.latencyMs.p95)),
          h('td', {}, fmtMs(t.latencyMs.p99)),
        ),
      ),
    ),
  );
}
