// Charts over time (uPlot): a series and its limit as a dashed line.
import uPlot from 'uplot';

const MIB = 1024 * 1024;
// Axis steps: whole powers of two of MiB, and round fractions of a core.
const BYTE_STEPS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192].map((n) => n * MIB);
const CORE_STEPS = [0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8];

/**
 * A chart in `el` of one figure over time. `unit` is 'cores' or 'bytes'. Returns
 * { update(points, limit) } where points are [{t: unix seconds, v}].
 */
export function timeChart(el, { label, unit, color }) {
  const fmt = unit === 'bytes' ? (v) => (v === null || v === undefined ? '—' : `${(v / MIB).toFixed(1)} MiB`) : (v) => (v === null || v === undefined ? '—' : `${v.toFixed(2)} cores`);
  const opts = {
    width: Math.max(300, el.clientWidth || 600),
    height: 220,
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max * 1.1, unit === 'bytes' ? 16 * MIB : 0.1)] } },
    axes: [
      { stroke: '#555', grid: { stroke: '#eee' } },
      { stroke: '#555', grid: { stroke: '#eee' }, size: 70, incrs: unit === 'bytes' ? BYTE_STEPS : CORE_STEPS, values: (u, vals) => vals.map((v) => (unit === 'bytes' ? `${Math.round(v / MIB)} MiB` : v.toFixed(2))) },
    ],
    series: [
      {},
      { label, stroke: color, fill: `${color}22`, width: 2, value: (u, v) => fmt(v), points: { show: false } },
      { label: 'limit', stroke: '#c0392b', dash: [6, 4], width: 1, value: (u, v) => fmt(v), points: { show: false } },
    ],
  };
  const chart = new uPlot(opts, [[], [], []], el);
  const resize = new ResizeObserver(() => chart.setSize({ width: Math.max(300, el.clientWidth), height: 220 }));
  resize.observe(el);
  return {
    update(points, limit) {
      const xs = points.map((p) => p.t);
      el.dataset.points = String(points.length);
      chart.setData([xs, points.map((p) => p.v), xs.map(() => limit ?? null)]);
    },
    destroy() {
      resize.disconnect();
      chart.destroy();
    },
  };
}
