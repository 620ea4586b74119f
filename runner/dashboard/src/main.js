// The dashboard: a single page with hash routes. Each page is mounted into #page with a context
// whose loops and requests end when the operator navigates away.
import { whoami, signOut, get } from './api.js';
import { clear, errorBox, h } from './dom.js';
import * as overview from './pages/overview.js';
import * as sessions from './pages/sessions.js';
import * as session from './pages/session.js';
import * as builds from './pages/builds.js';
import * as audit from './pages/audit.js';
import * as runs from './pages/runs.js';
import { showRunner } from './shell.js';

const routes = [
  [/^#?\/?$/, overview, 'overview'],
  [/^#\/sessions\/?$/, sessions, 'sessions'],
  [/^#\/sessions\/([0-9a-f-]{36})$/, session, 'sessions'],
  [/^#\/builds\/?$/, builds, 'builds'],
  [/^#\/builds\/([0-9a-f-]{36})$/, builds, 'builds', 'build'],
  [/^#\/deploys\/([0-9a-f-]{36})$/, builds, 'builds', 'deploy'],
  [/^#\/runs\/?$/, runs, 'runs'],
  [/^#\/audit\/?$/, audit, 'audit'],
];

/** What a page gets: its root, an abort signal, polling that stops with the page. */
function context(root) {
  const controller = new AbortController();
  const cleanups = [];
  return {
    root,
    signal: controller.signal,
    onLeave: (fn) => cleanups.push(fn),
    /** Runs fn now and every `ms` while the page is shown (paused while the tab is hidden). */
    every(ms, fn) {
      let timer;
      let stopped = false;
      const tick = async () => {
        if (stopped) return;
        if (!document.hidden) {
          try {
            await fn();
          } catch (e) {
            if (e.name !== 'AbortError') console.warn('refresh failed:', e.message);
          }
        }
        if (!stopped) timer = setTimeout(tick, ms);
      };
      cleanups.push(() => {
        stopped = true;
        clearTimeout(timer);
      });
      tick();
    },
    leave() {
      controller.abort();
      for (const fn of cleanups.splice(0)) fn();
    },
  };
}

let current = null;

function route() {
  if (current) current.leave();
  const root = document.getElementById('page');
  const hash = location.hash || '#/';
  for (const [re, page, nav, kind] of routes) {
    const m = re.exec(hash);
    if (!m) continue;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.nav === nav);
    clear(root);
    current = context(root);
    page.mount(current, { id: m[1], kind });
    window.scrollTo(0, 0);
    return;
  }
  clear(root, h('h1', 'Not found'), h('p', 'No such page. ', h('a', { href: '#/' }, 'Back to the overview.')));
  current = null;
}

async function start() {
  document.getElementById('sign-out').addEventListener('click', signOut);
  try {
    const me = await whoami();
    document.getElementById('whoami').textContent = `signed in with the ${me.label}`;
    get('runner').then(showRunner, () => {});
  } catch (e) {
    if (e.status !== 401) clear(document.getElementById('page'), errorBox(e));
    return;
  }
  window.addEventListener('hashchange', route);
  route();
}

start();
