// Sessions: one row per session with its sandbox's figures now, sortable, filterable by exercise
// and learner, refreshed every few seconds without a reload.
import { get } from '../api.js';
import { bar, bytes, clear, duration, empty, errorBox, h, stateChip } from '../dom.js';

const LIVE = 'starting,running,stopping';
const REFRESH_MS = 3000;

// Kept across visits of the page.
const view = { sort: 'age', desc: false, state: LIVE, exercise: '', learner: '' };

// [key, heading, sort key, numeric]
const columns = [
  ['learner', 'Learner', (r) => r.s.learner],
  ['exercise', 'Exercise', (r) => r.s.exercise],
  ['state', 'State', (r) => r.s.state],
  ['age', 'Age', (r) => -Date.parse(r.s.created_at), true],
  ['idle', 'Idle', (r) => (r.live ? -Date.parse(r.s.last_activity_at) : -Infinity), true],
  ['cpu', 'CPU', (r) => r.cpuRatio ?? -1, true],
  ['memory', 'Memory', (r) => r.u?.memory_working_set_bytes ?? -1],
  ['pids', 'Pids', (r) => r.u?.pids ?? -1, true],
  ['disk', 'Disk', (r) => r.u?.workspace_used_bytes ?? -1],
];

function row(r) {
  const { s, u } = r;
  const memLimit = u?.memory_limit_bytes ?? s.limits.memory_mb * 1024 * 1024;
  const cpuTitle = u && u.cpu_cores !== null ? `${u.cpu_cores.toFixed(3)} of ${u.cpu_limit_cores ?? '∞'} cores` : 'not sampled yet';
  return h(
    'tr',
    { dataset: { session: s.id, state: s.state }, tabindex: 0, on: { click: () => (location.hash = `#/sessions/${s.id}`), keydown: (e) => e.key === 'Enter' && (location.hash = `#/sessions/${s.id}`) } },
    h('td', h('a', { href: `#/sessions/${s.id}` }, s.learner)),
    h('td', s.exercise),
    h('td', stateChip(s.state)),
    h('td.num', duration(Date.now() - Date.parse(s.created_at))),
    h('td.num', r.live ? duration(Date.now() - Date.parse(s.last_activity_at)) : '—'),
    h('td.num', { title: cpuTitle, dataset: { cores: u?.cpu_cores ?? '' } }, r.cpuRatio === null ? '—' : `${(r.cpuRatio * 100).toFixed(0)} %`),
    h(
      'td.mem',
      { dataset: { bytes: u ? String(u.memory_working_set_bytes) : '', limit: String(memLimit) } },
      u ? bar(u.memory_working_set_bytes, memLimit, `${bytes(u.memory_working_set_bytes)} / ${bytes(memLimit)}`) : h('span.muted', '—'),
    ),
    h('td.num', u ? `${u.pids}${u.pids_limit ? ` / ${u.pids_limit}` : ''}` : '—'),
    h(
      'td.disk',
      u && u.workspace_used_bytes !== null
        ? bar(u.workspace_used_bytes, u.workspace_quota_bytes, `${bytes(u.workspace_used_bytes)} / ${bytes(u.workspace_quota_bytes)}`)
        : h('span.muted', '—'),
    ),
  );
}

export function mount(ctx) {
  const { root } = ctx;
  const stateSelect = h(
    'select#filter-state',
    { 'aria-label': 'State', on: { change: (e) => ((view.state = e.target.value), refresh()) } },
    [['live', LIVE], ['all states', ''], ['starting'], ['running'], ['stopping'], ['stopped'], ['failed']].map(([label, value]) =>
      h('option', { value: value ?? label, selected: (value ?? label) === view.state }, label),
    ),
  );
  const exerciseSelect = h('select#filter-exercise', { 'aria-label': 'Exercise', on: { change: (e) => ((view.exercise = e.target.value), refresh()) } }, h('option', { value: '' }, 'every exercise'));
  const learnerInput = h('input#filter-learner', {
    type: 'search',
    placeholder: 'learner contains…',
    'aria-label': 'Learner',
    value: view.learner,
    on: { input: (e) => ((view.learner = e.target.value), render()) },
  });
  const head = h('thead', h('tr'));
  const body = h('tbody');
  const status = h('span.updated.muted#updated');
  const note = h('p.small.muted');
  const table = h('table.sessions#sessions-table', head, body);
  clear(root, h('h1', 'Sessions', status), h('div.filters', stateSelect, exerciseSelect, learnerInput), h('div.table-wrap', table), note);

  let rows = [];
  function renderHead() {
    clear(
      head.firstChild,
      columns.map(([key, label, , numeric]) =>
        h(
          'th',
          {
            dataset: { sort: key },
            'aria-sort': view.sort === key ? (view.desc ? 'descending' : 'ascending') : 'none',
            class: `${view.sort === key ? 'sorted' : ''} ${numeric ? 'num' : ''}`.trim(),
            on: { click: () => ((view.desc = view.sort === key ? !view.desc : key !== 'learner' && key !== 'exercise' && key !== 'state'), (view.sort = key), render()) },
          },
          label,
          view.sort === key ? (view.desc ? ' ▾' : ' ▴') : '',
        ),
      ),
    );
  }
  function render() {
    renderHead();
    const needle = view.learner.trim().toLowerCase();
    const shown = rows.filter((r) => !needle || r.s.learner.toLowerCase().includes(needle));
    const key = columns.find((c) => c[0] === view.sort)[2];
    shown.sort((a, b) => {
      const [x, y] = [key(a), key(b)];
      const c = typeof x === 'string' ? x.localeCompare(y) : x - y;
      return view.desc ? -c : c;
    });
    clear(body, shown.length ? shown.map(row) : h('tr', h('td', { colspan: columns.length }, empty('No sessions match.'))));
    note.textContent = `${shown.length} of ${rows.length} session${rows.length === 1 ? '' : 's'} shown; CPU is the share of the sandbox's quota over the last sampling interval, memory its working set against its limit.`;
  }

  async function refresh() {
    const q = new URLSearchParams({ limit: '500' });
    if (view.state) q.set('state', view.state);
    if (view.exercise) q.set('exercise', view.exercise);
    const [list, figures] = await Promise.all([get(`sessions?${q}`, ctx), get('usage/sessions', ctx)]);
    rows = list.sessions.map((s) => {
      const u = figures.sessions[s.id] || null;
      const cpuRatio = u && u.cpu_cores !== null && u.cpu_limit_cores ? u.cpu_cores / u.cpu_limit_cores : null;
      return { s, u, cpuRatio, live: ['starting', 'running', 'stopping'].includes(s.state) };
    });
    render();
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.dataset.at = String(Date.now());
    status.dataset.count = String(Number(status.dataset.count || 0) + 1);
  }

  get('exercises', ctx).then(
    ({ exercises }) => {
      for (const e of exercises) exerciseSelect.append(h('option', { value: e.slug, selected: e.slug === view.exercise }, e.slug));
    },
    () => {},
  );
  renderHead();
  ctx.every(REFRESH_MS, async () => {
    try {
      await refresh();
    } catch (e) {
      if (e.name !== 'AbortError') clear(body, h('tr', h('td', { colspan: columns.length }, errorBox(e))));
    }
  });
}
