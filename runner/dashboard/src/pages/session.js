// One session: its figures now, CPU and memory over the last hour, its events and checks, and
// the stop button.
import { act, get } from '../api.js';
import { ago, bar, bytes, clear, clock, cores, duration, empty, errorBox, h, stateChip, toast } from '../dom.js';
import { timeChart } from '../charts.js';

const LIVE = ['starting', 'running', 'stopping'];

function facts(s) {
  return h(
    'dl.facts',
    h('dt', 'Session'), h('dd.mono', s.id),
    h('dt', 'Learner'), h('dd', s.learner),
    h('dt', 'Exercise'), h('dd', s.exercise),
    h('dt', 'Image'), h('dd.mono', s.image),
    h('dt', 'Created'), h('dd', `${clock(s.created_at)} (${ago(s.created_at)})`),
    h('dt', 'Last activity'), h('dd', `${clock(s.last_activity_at)} (${ago(s.last_activity_at)})`),
    s.expires_at ? [h('dt', 'Expires'), h('dd', `${clock(s.expires_at)} unless active (idle timeout or lifetime)`)] : [h('dt', 'Ended'), h('dd', s.ended_at ? `${clock(s.ended_at)} (${ago(s.ended_at)})` : '—')],
    h('dt', 'Limits'), h('dd', `${s.limits.memory_mb} MiB, ${cores(s.limits.cpus)}, ${s.limits.pids} pids, workspace ${s.limits.workspace_mb} MiB`),
    s.failure_reason ? (s.state === 'failed' ? [h('dt', 'Failure'), h('dd.error-text', s.failure_reason)] : [h('dt', 'Why it ended'), h('dd', s.failure_reason)]) : null,
  );
}

function figures(u) {
  const n = u.now;
  if (!n) return empty(u.state && !LIVE.includes(u.state) ? 'The session has ended: no figures.' : 'Not sampled yet.');
  return h(
    'div.grid.figures',
    h('div.figure', h('h3', 'CPU'), h('p.big', n.cpu_cores === null ? '—' : n.cpu_cores.toFixed(2), h('span.muted', ` / ${n.cpu_limit_cores ? cores(n.cpu_limit_cores) : 'no limit'}`)), bar(n.cpu_cores || 0, n.cpu_limit_cores, 'CPU against its quota'), h('p.small.muted', `throttled ${n.cpu_throttled_seconds_total.toFixed(1)} s in ${n.cpu_throttled_periods_total} of ${n.cpu_periods_total} periods`)),
    h('div.figure#figure-memory', { dataset: { bytes: String(n.memory_working_set_bytes) } }, h('h3', 'Memory'), h('p.big', bytes(n.memory_working_set_bytes), h('span.muted', ` / ${bytes(n.memory_limit_bytes)}`)), bar(n.memory_working_set_bytes, n.memory_limit_bytes, 'working set against the limit'), h('p.small.muted', `OOM kills: ${n.oom_kills_total ?? 'not counted by this kernel'}`)),
    h('div.figure', h('h3', 'Processes'), h('p.big', String(n.pids), h('span.muted', n.pids_limit ? ` / ${n.pids_limit}` : '')), bar(n.pids, n.pids_limit, 'pids against the limit'), h('p.small.muted', u.runtime === 'runsc' ? 'under gVisor: the sandbox kernel’s threads' : 'processes and threads')),
    h('div.figure', h('h3', 'Workspace'), h('p.big', bytes(n.workspace_used_bytes), h('span.muted', ` / ${bytes(n.workspace_quota_bytes)}`)), n.workspace_used_bytes === null ? empty('no quota') : bar(n.workspace_used_bytes, n.workspace_quota_bytes, 'disk used against the quota'), h('p.small.muted', n.network_rx_bytes_total === null ? 'no network' : `network in ${bytes(n.network_rx_bytes_total)}, out ${bytes(n.network_tx_bytes_total)}`)),
  );
}

function events(list) {
  if (!list.length) return empty('No events.');
  return h(
    'ol.events#events',
    [...list].reverse().map((e) => h(`li.ev-${e.kind}`, { dataset: { kind: e.kind } }, h('span.ev-kind', e.kind), ' ', h('span.muted', clock(e.at)), e.detail ? h('div.small', e.detail) : null)),
  );
}

function checks(list) {
  if (!list.length) return empty('No checks yet.');
  return h(
    'ul.checks#checks',
    list.map((c) =>
      h(
        'li',
        { dataset: { passed: String(c.passed) } },
        h('details', h('summary', h(`span.chip.${c.passed ? 'state-running' : 'state-failed'}`, c.passed ? 'passed' : c.timed_out ? 'timed out' : 'failed'), ` exit ${c.exit_code} · ${duration(c.duration_ms)} · ${clock(c.created_at)}`), h('pre.output', c.output || '(no output)', c.truncated ? '\n… (cut)' : '')),
      ),
    ),
  );
}

export function mount(ctx, { id }) {
  const { root } = ctx;
  const title = h('h1', 'Session');
  const actions = h('div.actions');
  const factsBox = h('div');
  const figuresBox = h('div');
  const cpuBox = h('div.chart#chart-cpu');
  const memBox = h('div.chart#chart-memory');
  const eventsBox = h('div', empty('Loading…'));
  const checksBox = h('div', empty('Loading…'));
  const status = h('span.updated.muted#updated');
  clear(
    root,
    h('p.crumbs', h('a', { href: '#/sessions' }, '← Sessions')),
    h('div.titlebar', title, status, actions),
    h('div.grid.two', h('section.card', h('h2', 'Session'), factsBox), h('section.card', h('h2', 'Now'), figuresBox)),
    h('div.grid.two', h('section.card', h('h2', 'CPU, last hour'), cpuBox), h('section.card', h('h2', 'Memory, last hour'), memBox)),
    h('div.grid.two', h('section.card', h('h2', 'Events'), eventsBox), h('section.card', h('h2', 'Checks'), checksBox)),
  );
  const cpu = timeChart(cpuBox, { label: 'CPU', unit: 'cores', color: '#2d6cdf' });
  const mem = timeChart(memBox, { label: 'working set', unit: 'bytes', color: '#16a085' });
  ctx.onLeave(() => (cpu.destroy(), mem.destroy()));

  let shownState = null;
  function renderActions(s) {
    if (shownState === s.state) return;
    shownState = s.state;
    const live = LIVE.includes(s.state) && s.state !== 'stopping';
    const stop = h('button#stop-session.danger', { type: 'button', disabled: !live }, live ? 'Stop this session' : 'Stopped');
    stop.addEventListener('click', async () => {
      if (!confirm(`Stop the session of ${s.learner} on ${s.exercise}? The sandbox is removed; the workspace is kept.`)) return;
      stop.disabled = true;
      stop.textContent = 'Stopping…';
      try {
        await act('DELETE', `sessions/${s.id}`);
        toast('Session stopped', 'ok');
      } catch (e) {
        toast(`Could not stop: ${e.message}`, 'error');
        shownState = null;
      }
      await refresh();
    });
    clear(actions, s.ide_url ? h('a.button', { href: s.ide_url, target: '_blank', rel: 'noopener noreferrer' }, 'Open the IDE') : null, stop);
  }

  async function refresh() {
    const [s, u, ev, ch] = await Promise.all([get(`sessions/${id}`, ctx), get(`sessions/${id}/usage`, ctx), get(`sessions/${id}/events`, ctx), get(`sessions/${id}/checks`, ctx)]);
    clear(title, `${s.learner} · ${s.exercise} `, stateChip(s.state));
    title.dataset.state = s.state;
    renderActions(s);
    clear(factsBox, facts(s));
    clear(figuresBox, figures(u));
    const pts = u.history.map((p) => ({ t: Date.parse(p.at) / 1000, p }));
    cpu.update(pts.map(({ t, p }) => ({ t, v: p.cpu_cores })), u.now?.cpu_limit_cores ?? s.limits.cpus);
    mem.update(pts.map(({ t, p }) => ({ t, v: p.memory_working_set_bytes })), u.now?.memory_limit_bytes ?? s.limits.memory_mb * 1024 * 1024);
    clear(eventsBox, events(ev.events));
    clear(checksBox, checks(ch.checks));
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }
  ctx.every(5000, async () => {
    try {
      await refresh();
    } catch (e) {
      if (e.name !== 'AbortError') clear(factsBox, errorBox(e));
    }
  });
}
