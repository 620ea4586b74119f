// Overview: capacity against its limits, sessions by state, start latency, work in progress,
// recent errors and alerts, the drain switch, and the fleet's nodes.
import { act, get } from '../api.js';
import { ago, bar, bytes, clear, clock, cores, empty, errorBox, h, stateChip, toast } from '../dom.js';
import { showRunner } from '../shell.js';
import { problemsPanel } from './problems.js';

const STATES = ['starting', 'running', 'stopping', 'stopped', 'failed'];

function percentOf(used, total) {
  return total ? `${Math.round((used / total) * 100)} %` : '—';
}

function card(title, ...body) {
  return h('section.card', h('h2', title), ...body);
}

function capacityCards(cap) {
  const m = cap.memory;
  const diskUsed = cap.disk.total_bytes !== null ? cap.disk.total_bytes - cap.disk.free_bytes : null;
  return h(
    'div.grid.capacity',
    card(
      'Sessions',
      h('p.big', { dataset: { figure: 'sessions' } }, `${cap.sessions.live}`, h('span.muted', ` / ${cap.sessions.max}`)),
      bar(cap.sessions.live + cap.sessions.pooled, cap.sessions.max, `${cap.sessions.live} of ${cap.sessions.max} live${cap.sessions.pooled ? `, ${cap.sessions.pooled} pooled` : ''}`),
    ),
    card(
      'Memory committed',
      h('p.big', bytes(m.committed_bytes), h('span.muted', ` / ${bytes(m.host_total_bytes)}`)),
      bar(m.committed_bytes, m.host_total_bytes, `${percentOf(m.committed_bytes, m.host_total_bytes)} of host memory`, { title: 'memory limits of live sandboxes and builds against the host memory' }),
      h('p.small.muted', `sessions ${bytes(m.sessions_bytes)}, pools ${bytes(m.pool_bytes)}, builds ${bytes(m.builds_bytes)}; ${bytes(m.host_available_bytes)} available now`),
    ),
    card(
      'CPU committed',
      h('p.big', `${cap.cpu.committed_cores.toFixed(1)}`, h('span.muted', ` / ${cap.cpu.host_cores} cores`)),
      bar(cap.cpu.committed_cores, cap.cpu.host_cores, `${percentOf(cap.cpu.committed_cores, cap.cpu.host_cores)} of host cores`, { title: 'CPU quotas of live sandboxes against the host cores' }),
    ),
    card(
      'Data disk',
      h('p.big', bytes(cap.disk.free_bytes), h('span.muted', ' free')),
      diskUsed === null ? empty('not readable') : bar(diskUsed, cap.disk.total_bytes, `${bytes(diskUsed)} of ${bytes(cap.disk.total_bytes)} used`),
      h('p.small.muted.mono', cap.disk.path),
    ),
    card(
      'Start slots',
      h('p.big', `${cap.start_slots.in_use}`, h('span.muted', ` / ${cap.start_slots.total} in use`)),
      bar(cap.start_slots.in_use, cap.start_slots.total, `${cap.start_slots.in_use} starting now`),
    ),
    card(
      'Build queue',
      h('p.big', `${cap.builds.queued}`, h('span.muted', ` queued, ${cap.builds.running} running`)),
      bar(cap.builds.queued, cap.builds.max_queued, `${cap.builds.queued} of ${cap.builds.max_queued} queue places`),
    ),
  );
}

function byState(counts) {
  const total = STATES.reduce((n, s) => n + (counts[s] || 0), 0);
  return card(
    'Sessions by state',
    h(
      'div.stack',
      { role: 'img', 'aria-label': STATES.map((s) => `${s} ${counts[s] || 0}`).join(', ') },
      STATES.filter((s) => counts[s]).map((s) => h(`div.seg.state-${s}`, { style: { flexGrow: String(counts[s]) }, title: `${s}: ${counts[s]}` })),
    ),
    h(
      'ul.legend',
      STATES.map((s) => h('li', stateChip(s), h('span.count', { dataset: { state: s } }, String(counts[s] || 0)))),
    ),
    h('p.small.muted', `${total} session${total === 1 ? '' : 's'} recorded`),
  );
}

const fmtSeconds = (s) => (s === null || s === undefined ? '—' : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`);

function latency(l, ready) {
  const fmt = fmtSeconds;
  const readyLine = (name, r) => h('tr', h('td', name), h('td.num', { dataset: { ready: name } }, fmt(r.p50_seconds)), h('td.num', fmt(r.p99_seconds)), h('td.num.muted', String(r.count)));
  return card(
    'Session start latency',
    h('div.pair', h('div', h('p.big', { id: 'latency-p50' }, fmt(l.p50_seconds)), h('p.small.muted', 'p50')), h('div', h('p.big', { id: 'latency-p99' }, fmt(l.p99_seconds)), h('p.small.muted', 'p99'))),
    h('p.small.muted', `${l.count} start${l.count === 1 ? '' : 's'} on ${l.runtime} since this runner started, request to running sandbox (estimated from the histogram's buckets)`),
    h('table.compact', h('thead', h('tr', h('th', 'IDE ready'), h('th.num', 'p50'), h('th.num', 'p99'), h('th.num', 'count'))), h('tbody', readyLine('cold', ready.cold), readyLine('pool', ready.pool))),
  );
}

function poolsCard(pools) {
  return card(
    'Warm pools',
    pools.length
      ? h(
          'table.compact#pools',
          h('thead', h('tr', h('th', 'exercise'), h('th.num', 'ready'), h('th.num', 'target (min–max)'), h('th.num', 'claims / min'), h('th.num', 'hits'), h('th.num', 'misses'), h('th.num', 'returning'))),
          h(
            'tbody',
            pools.map((p) =>
              h(
                'tr',
                { dataset: { exercise: p.exercise } },
                h('td', p.exercise, p.backing_off ? h('span.pill.warn', ' backing off') : ''),
                h('td.num', { dataset: { figure: 'ready' } }, `${p.ready}`, p.starting ? h('span.muted', ` +${p.starting} starting`) : ''),
                h('td.num', `${p.target} (${p.min}–${p.max})`),
                h('td.num', String(p.recent_claims)),
                h('td.num', { dataset: { figure: 'hits' } }, String(p.hits)),
                h('td.num', String(p.misses)),
                h('td.num.muted', String(p.returning)),
              ),
            ),
          ),
        )
      : empty('No exercise keeps a warm pool.'),
    h('p.small.muted', 'Ready sandboxes new learners claim instead of waiting for a start; hits, misses and returning learners since this runner started.'),
  );
}

// The fleet's nodes (a single host is the one node `local`): health, availability, room.
function nodesCard(nodes, refresh) {
  const row = (n) => {
    const next = n.operator_availability === 'active' ? 'drain' : 'active';
    const button = h(`button.small${next === 'drain' ? '.danger' : ''}`, { type: 'button', dataset: { node: n.name, set: next } }, next === 'drain' ? 'Drain' : 'Activate');
    button.addEventListener('click', async () => {
      const q = next === 'drain' ? `Drain node ${n.name}? It gets no new sessions; its learners' next sessions start elsewhere.` : `Let node ${n.name} take new sessions again?`;
      if (!confirm(q)) return;
      button.disabled = true;
      try {
        await act('PUT', `nodes/${encodeURIComponent(n.name)}/availability`, { availability: next });
        toast(next === 'drain' ? `Node ${n.name} drained` : `Node ${n.name} active`, 'ok');
      } catch (e) {
        toast(`Could not change node ${n.name}: ${e.message}`, 'error');
      }
      await refresh();
    });
    const c = n.capacity;
    return h(
      'tr',
      { dataset: { node: n.name } },
      h('td.mono', { title: `${n.name} ${n.url}`.trim() }, n.name.length > 14 ? `${n.name.slice(0, 12)}…` : n.name, n.this ? h('span.muted', ' (this)') : ''),
      h('td', n.up ? h('span.pill.ok', 'up') : h('span.pill.error', n.lost_at ? `lost ${ago(n.lost_at)}` : 'silent'), h('span.muted.small', ` beat ${ago(n.heartbeat_at)}`)),
      h('td', { dataset: { availability: n.availability } }, n.availability === 'active' ? h('span.pill.ok', 'active') : h('span.pill.warn', n.availability), n.swarm_availability && n.swarm_availability !== n.operator_availability ? h('span.muted.small', ` swarm: ${n.swarm_availability}`) : ''),
      h('td.num', { dataset: { figure: 'node-sessions' } }, `${c.live_sessions} / ${c.max_sessions}`),
      h('td.num', `${bytes(c.committed_memory_mb * 1048576)} / ${bytes(c.memory_mb * 1048576)}`),
      h('td.num', bytes(c.disk_free_mb * 1048576)),
      h('td', button),
    );
  };
  return card(
    'Nodes',
    h('table.compact#nodes', h('thead', h('tr', h('th', 'node'), h('th', 'health'), h('th', 'availability'), h('th.num', 'sessions'), h('th.num', 'memory committed'), h('th.num', 'disk free'), h('th', ''))), h('tbody', nodes.map(row))),
    h('p.small.muted', 'Sandbox hosts sharing this database. A drained node takes no new sessions, and its learners start elsewhere with their files; a node silent past RUNNER_NODE_LOST_SECS is lost and its sessions end.'),
  );
}

function runnerCard(runner, refresh) {
  const button = runner.draining
    ? h('button#undrain.primary', { type: 'button' }, 'Undrain: take new sessions')
    : h('button#drain.danger', { type: 'button' }, 'Drain this runner');
  button.addEventListener('click', async () => {
    const verb = runner.draining ? 'undrain' : 'drain';
    const question = runner.draining
      ? `Take new sessions on ${runner.instance} again?`
      : `Drain ${runner.instance}? New sessions get 503 with Retry-After; live ones keep running.`;
    if (!confirm(question)) return;
    button.disabled = true;
    try {
      showRunner(await act('POST', `runner/${verb}`));
      toast(runner.draining ? 'Undrained: taking new sessions' : 'Draining: new sessions are refused', 'ok');
    } catch (e) {
      toast(`Could not ${verb}: ${e.message}`, 'error');
    }
    await refresh();
  });
  return card(
    'This runner',
    h('p', h('span.mono', runner.instance), ' · version ', runner.version),
    h('p', { id: 'drain-state', dataset: { draining: String(runner.draining) } }, runner.draining ? h('span.pill.warn', `draining since ${clock(runner.draining_since)} (${ago(runner.draining_since)})`) : h('span.pill.ok', 'taking new sessions')),
    button,
  );
}

function inProgress(o) {
  const builds = o.builds_in_progress;
  const deploys = o.deploys_in_progress;
  return card(
    'Builds and deploys in progress',
    builds.length || deploys.length
      ? h(
          'ul.list',
          builds.map((b) => h('li', stateChip(b.state), ' ', h('a', { href: `#/builds/${b.id}` }, `build of ${b.exercise}`), h('span.muted', ` · ${ago(b.started_at || b.created_at)}`))),
          deploys.map((d) => h('li', stateChip(d.state), ' ', h('a', { href: `#/deploys/${d.id}` }, `${d.kind} of ${d.app} to ${d.version}`), h('span.muted', ` · ${ago(d.created_at)}`))),
        )
      : empty('Nothing building or deploying.'),
  );
}

function topCpu(top) {
  const list = top.sandboxes.filter((s) => s.now.running);
  return card(
    'Busiest sandboxes (CPU now)',
    list.length
      ? h(
          'table.compact',
          h('tbody', list.map((s) => h('tr', h('td', s.session ? h('a', { href: `#/sessions/${s.session}` }, s.learner || s.session.slice(0, 8)) : s.app || s.detail || s.kind), h('td.muted', s.exercise || s.app || ''), h('td.num', `${(s.now.cpu_cores || 0).toFixed(2)} of ${s.now.cpu_limit_cores ? cores(s.now.cpu_limit_cores) : 'no limit'}`), h('td.num', bytes(s.now.memory_working_set_bytes))))),
        )
      : empty('No sandbox is running.'),
  );
}

export function mount(ctx) {
  const { root } = ctx;
  clear(root, h('h1', 'Overview'), h('p.muted', 'Loading…'));
  const problems = problemsPanel();
  const refresh = async () => {
    const [cap, o, top, pools, nodes] = await Promise.all([get('capacity', ctx), get('overview', ctx), get('usage/top?by=cpu&limit=5', ctx), get('pools', ctx), get('nodes', ctx)]);
    showRunner(o.runner);
    clear(
      root,
      h('h1', 'Overview', h('span.updated.muted', { id: 'updated', dataset: { at: String(Date.now()) } }, `updated ${new Date().toLocaleTimeString()}`)),
      capacityCards(cap),
      h('div.grid.two', byState(o.sessions_by_state), latency(o.start_latency, o.ready_latency), runnerCard(o.runner, refresh), inProgress(o)),
      h('div.grid.two', poolsCard(pools.pools), nodesCard(nodes.nodes, refresh)),
      h('div.grid.two', problems.el, topCpu(top)),
    );
  };
  ctx.every(5000, async () => {
    try {
      await refresh();
    } catch (e) {
      if (e.name !== 'AbortError') clear(root, h('h1', 'Overview'), errorBox(e));
    }
  });
  ctx.every(10000, () => problems.refresh(ctx));
}
