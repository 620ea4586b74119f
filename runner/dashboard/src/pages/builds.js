// Builds and deploys: the build queue, recent builds (all exercises or one), a build's or a
// deploy's log followed live, and the managed apps with their deploys and the rollback action.
import { act, follow, get } from '../api.js';
import { ago, clear, clock, duration, empty, errorBox, h, stateChip, toast } from '../dom.js';

const view = { exercise: '' };

function took(b) {
  if (!b.started_at) return '—';
  return duration((b.finished_at ? Date.parse(b.finished_at) : Date.now()) - Date.parse(b.started_at));
}

function buildsTable(list, selected) {
  if (!list.length) return empty('No builds.');
  return h(
    'table.builds',
    h('thead', h('tr', ['Exercise', 'State', 'Version', 'Queued', 'Took', 'Why it failed'].map((t) => h('th', t)))),
    h(
      'tbody',
      list.map((b) =>
        h(
          'tr',
          { dataset: { build: b.id }, class: b.id === selected ? 'selected' : '' },
          h('td', h('a', { href: `#/builds/${b.id}` }, b.exercise)),
          h('td', stateChip(b.state), b.cached ? h('span.muted', ' cached') : null),
          h('td.mono', b.version ? b.version.slice(0, 12) : '—'),
          h('td', ago(b.created_at)),
          h('td.num', took(b)),
          h('td.small.clip', { title: b.failure_reason || '' }, b.failure_reason || ''),
        ),
      ),
    ),
  );
}

/** A log followed live into `pre` until it ends or the page is left. */
function logPanel(ctx, title, path, facts) {
  const pre = h('pre.log#log', { tabindex: 0 });
  const state = h('span.muted#log-state', 'following…');
  const panel = h('section.card.log-card', h('div.titlebar', h('h2', title), state), facts, pre);
  let stick = true;
  pre.addEventListener('scroll', () => (stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4));
  follow(path, ctx.signal, (text) => {
    if (!text) return;
    pre.append(text);
    if (stick) pre.scrollTop = pre.scrollHeight;
  }).then(
    () => (state.textContent = 'ended'),
    (e) => e.name !== 'AbortError' && (state.textContent = `stopped: ${e.message}`),
  );
  return panel;
}

async function buildLog(ctx, id) {
  const b = await get(`builds/${id}`, ctx);
  return logPanel(ctx, `Build of ${b.exercise}`, `builds/${id}/logs`, h('p', stateChip(b.state), ` ${b.id} · queued ${clock(b.created_at)} · took ${took(b)}`, b.failure_reason ? h('span.error-text', ` · ${b.failure_reason}`) : null));
}

async function deployLog(ctx, id) {
  const d = await get(`deploys/${id}`, ctx);
  return logPanel(ctx, `${d.kind} of ${d.app} to ${d.version}`, `deploys/${id}/logs`, h('p', stateChip(d.state), ` ${d.id} · ${clock(d.created_at)}`, d.failure_reason ? h('span.error-text', ` · ${d.failure_reason}`) : null));
}

async function rollback(app, version, refresh) {
  const what = version ? `to ${version}` : 'to the previous version';
  if (!confirm(`Roll ${app} back ${what}? Its current containers are replaced.`)) return;
  try {
    const d = await act('POST', `apps/${encodeURIComponent(app)}/rollback`, version ? { version } : {});
    toast(`Rolling ${app} back to ${d.version}`, 'ok');
    location.hash = `#/deploys/${d.id}`;
  } catch (e) {
    toast(`Could not roll back: ${e.message}`, 'error');
  }
  await refresh();
}

function appCard(a, deploys, refresh) {
  const services = Object.entries(a.services_state || {});
  const previous = deploys.filter((d) => d.state === 'succeeded' && d.version !== a.current_version).map((d) => d.version);
  return h(
    'section.card.app',
    { dataset: { app: a.name } },
    h('div.titlebar', h('h2', a.name), h('button.rollback', { type: 'button', disabled: !previous.length, title: previous.length ? 'Roll back to the version before the current one' : 'No earlier version to roll back to', on: { click: () => rollback(a.name, null, refresh) } }, 'Roll back')),
    h('p', 'current version ', h('span.mono', a.current_version || 'none'), services.length ? [' · ', services.map(([name, st]) => h('span.chip', `${name}: ${typeof st === 'string' ? st : st.state || JSON.stringify(st)}`))] : null),
    deploys.length
      ? h(
          'table.deploys',
          h('thead', h('tr', ['', 'Version', 'State', 'When', 'Why it failed', ''].map((t) => h('th', t)))),
          h(
            'tbody',
            deploys.slice(0, 10).map((d) =>
              h(
                'tr',
                h('td', d.kind),
                h('td.mono', h('a', { href: `#/deploys/${d.id}` }, d.version)),
                h('td', stateChip(d.state)),
                h('td', ago(d.created_at)),
                h('td.small.clip', { title: d.failure_reason || '' }, d.failure_reason || ''),
                h('td', d.state === 'succeeded' && d.version !== a.current_version ? h('button.small', { type: 'button', on: { click: () => rollback(a.name, d.version, refresh) } }, `Roll back to ${d.version}`) : null),
              ),
            ),
          ),
        )
      : empty('Never deployed.'),
  );
}

export function mount(ctx, { id, kind }) {
  const { root } = ctx;
  const logBox = h('div');
  const queueBox = h('div', empty('Loading…'));
  const recentBox = h('div', empty('Loading…'));
  const appsBox = h('div', empty('Loading…'));
  const exerciseSelect = h('select#builds-exercise', { 'aria-label': 'Exercise', on: { change: (e) => ((view.exercise = e.target.value), refresh()) } }, h('option', { value: '' }, 'every exercise'));
  clear(
    root,
    h('h1', 'Builds and deploys', h('span.updated.muted#updated')),
    logBox,
    h('div.grid.two', h('section.card#build-queue', h('h2', 'Build queue'), queueBox), h('section.card#recent-builds', h('div.titlebar', h('h2', 'Recent builds'), exerciseSelect), recentBox)),
    h('h2.section', 'Managed apps'),
    appsBox,
  );
  if (id) {
    (kind === 'deploy' ? deployLog(ctx, id) : buildLog(ctx, id)).then(
      (panel) => clear(logBox, panel),
      (e) => clear(logBox, errorBox(e)),
    );
  }
  get('exercises', ctx).then(({ exercises }) => exercises.forEach((e) => exerciseSelect.append(h('option', { value: e.slug, selected: e.slug === view.exercise }, e.slug))), () => {});

  async function refresh() {
    const all = await get('builds', ctx);
    clear(queueBox, all.active.length ? buildsTable(all.active, id) : empty('The queue is empty.'));
    const recent = view.exercise ? (await get(`exercises/${encodeURIComponent(view.exercise)}/builds`, ctx)).builds.slice(0, 20) : all.recent;
    clear(recentBox, buildsTable(recent, id));
    const { apps } = await get('apps', ctx);
    const withDeploys = await Promise.all(apps.map(async (a) => [a, (await get(`apps/${encodeURIComponent(a.name)}/deploys`, ctx)).deploys]));
    clear(appsBox, withDeploys.length ? h('div.grid.two', withDeploys.map(([a, d]) => appCard(a, d, refresh))) : empty('No managed apps.'));
    document.getElementById('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  }
  ctx.every(5000, async () => {
    try {
      await refresh();
    } catch (e) {
      if (e.name !== 'AbortError') clear(queueBox, errorBox(e));
    }
  });
}
