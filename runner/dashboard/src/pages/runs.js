// One-shot runs: what this runner is doing now (runs in flight and waiting, slots, prepared
// sandboxes), the last 24 hours by what they ran in and status, and the newest runs.
import { get } from '../api.js';
import { ago, clear, clock, empty, errorBox, h } from '../dom.js';

const GOOD = new Set(['accepted']);
const USERS = new Set(['wrong_answer', 'runtime_error', 'compile_error', 'time_limit', 'wall_time_limit', 'memory_limit', 'output_limit']);

function verdictChip(status) {
  if (!status) return h('span.chip.state-queued', 'unfinished');
  const kind = GOOD.has(status) ? 'state-succeeded' : USERS.has(status) ? 'state-stopping' : 'state-failed';
  return h(`span.chip.${kind}`, status);
}

function nowCard(now) {
  const fact = (label, value, id) => [h('dt', label), h(`dd#${id}`, String(value))];
  return h(
    'section.card',
    h('h2', 'Now'),
    h(
      'dl.facts',
      fact('running or waiting', now.in_flight, 'runs-in-flight'),
      fact('waiting for a slot', now.queued, 'runs-queued'),
      fact('slots', now.slots, 'runs-slots'),
      fact('sandboxes prepared', now.prepared, 'runs-prepared'),
    ),
  );
}

function countsCard(counts) {
  const statuses = [...new Set(counts.map((c) => c.status))].sort();
  const sources = [...new Set(counts.map((c) => c.source))].sort();
  const cell = (source, status) => counts.find((c) => c.source === source && c.status === status)?.count || 0;
  return h(
    'section.card',
    h('h2', 'Last 24 hours'),
    counts.length
      ? h(
          'table#run-counts',
          h('thead', h('tr', h('th', 'Runtime'), statuses.map((s) => h('th.num', verdictChip(s))), h('th.num', 'All'))),
          h(
            'tbody',
            sources.map((src) =>
              h(
                'tr',
                { dataset: { source: src } },
                h('td.mono', src),
                statuses.map((s) => h('td.num', { dataset: { status: s } }, String(cell(src, s)))),
                h('td.num', String(statuses.reduce((n, s) => n + cell(src, s), 0))),
              ),
            ),
          ),
        )
      : empty('No runs finished in the last 24 hours.'),
  );
}

function recentCard(recent) {
  return h(
    'section.card',
    h('h2', 'Newest runs'),
    recent.length
      ? h(
          'table#runs',
          h('thead', h('tr', ['When', 'Runtime', 'Learner', 'Status'].map((t) => h('th', t)), ['Test cases', 'CPU (max)', 'Took'].map((t) => h('th.num', t)))),
          h(
            'tbody',
            recent.map((r) => {
              const passed = r.tests.filter((t) => t.status === 'accepted').length;
              const cpu = Math.max(0, ...r.tests.map((t) => t.time_ms));
              return h(
                'tr',
                { dataset: { run: r.id, status: r.status || '' } },
                h('td', { title: clock(r.created_at) }, ago(r.created_at)),
                h('td.mono', r.runtime || `exercise:${r.exercise}`),
                h('td.mono.small', r.learner || '—'),
                h('td', verdictChip(r.status)),
                h('td.num', r.state === 'finished' ? `${passed} / ${r.tests.length}` : r.state),
                h('td.num', r.tests.length ? `${cpu} ms` : '—'),
                h('td.num', r.duration_ms != null ? `${r.duration_ms} ms` : '—'),
              );
            }),
          ),
        )
      : empty('No runs yet.'),
  );
}

export function mount(ctx) {
  const { root } = ctx;
  const box = h('div', empty('Loading…'));
  clear(root, h('h1', 'One-shot runs'), box);
  ctx.every(5000, async () => {
    try {
      const v = await get('runs', ctx);
      clear(box, h('div.grid.two', nowCard(v.now), countsCard(v.last_24h)), recentCard(v.recent));
    } catch (e) {
      if (e.name !== 'AbortError') clear(box, errorBox(e));
    }
  });
}
