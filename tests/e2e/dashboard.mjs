#!/usr/bin/env node
// End-to-end test of the operators' dashboard in real headless Chromium (playwright-core, the
// system's Chromium), against a running runner:
//
//   BASE=http://127.0.0.1:PORT OPERATOR_TOKEN=... API_TOKEN=... SESSION_ID=... LEARNER=...
//   EXERCISE=... BASELINE_BYTES=... HELD_BYTES=... [BUILD_ID=...] ARTIFACTS=<dir>
//   [CHROMIUM=/usr/bin/chromium] node tests/e2e/dashboard.mjs
//
// The session's sandbox holds HELD_BYTES more memory than BASELINE_BYTES (its working set before
// the allocation). Steps: the dashboard sends a browser without a cookie to the sign-in page; a
// wrong token is refused (401, no cookie); the operator token signs in; the overview shows its
// panels; the sessions page lists the session with its memory within 10 % of what is held and
// updates itself; an OOM kill (of a memory bomb beside it) shows among the recent problems and
// the session's events; the session page draws its charts and lists its events and checks; pages on
// another origin (another port of 127.0.0.1: same site; and evil.test, mapped to 127.0.0.1: a
// cross-site one) cannot drain the runner or stop sessions; drain and undrain from the overview;
// the builds page follows a build's log; the runs page counts one-shot runs (two accepted and
// one wrong answer on the python3 runtime, made by the caller); the stop button ends the
// session; sign out. Every wait
// polls against a deadline. Screenshots: $ARTIFACTS/dashboard-*.png (and <step>.png on failure).
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const t0 = Date.now();
const log = (msg) => console.log(`[dashboard ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}`);

function env(name, fallback) {
  const v = process.env[name];
  if (v !== undefined && v !== '') return v;
  if (fallback !== undefined) return fallback;
  console.error(`dashboard.mjs: the environment variable ${name} is required`);
  process.exit(2);
}

const BASE = env('BASE').replace(/\/$/, '');
const OPERATOR_TOKEN = env('OPERATOR_TOKEN');
const API_TOKEN = env('API_TOKEN');
const SESSION_ID = env('SESSION_ID');
const LEARNER = env('LEARNER');
const EXERCISE = env('EXERCISE');
const BASELINE = Number(env('BASELINE_BYTES'));
const HELD = Number(env('HELD_BYTES'));
const BUILD_ID = env('BUILD_ID', '');
const ARTIFACTS = path.resolve(env('ARTIFACTS'));
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const MIB = 1024 * 1024;
fs.mkdirSync(ARTIFACTS, { recursive: true });

const consoleLines = [];
const cspViolations = [];
let browser;
let page;
let currentStep = 'launch';

async function until(what, timeoutMs, fn, intervalMs = 150) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const why = lastError ? ` (last error: ${lastError.message.split('\n')[0]})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

async function step(name, timeoutMs, fn) {
  currentStep = name;
  log(`STEP ${name} ...`);
  const started = Date.now();
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`step "${name}" took longer than ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    const v = await Promise.race([fn(), deadline]);
    log(`  ok: ${name} (${Date.now() - started} ms)`);
    return v;
  } finally {
    clearTimeout(timer);
  }
}

async function shot(name) {
  const file = path.join(ARTIFACTS, `dashboard-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log(`  screenshot: ${file}`);
}

/** The runner's API, with the bearer token (what an operator's tool would see). */
async function api(p) {
  const r = await fetch(`${BASE}${p}`, { headers: { authorization: `Bearer ${API_TOKEN}` } });
  if (!r.ok) throw new Error(`GET ${p}: ${r.status} ${await r.text()}`);
  return r.json();
}

/** A page on another origin that posts to the dashboard's actions (an attacker's page). */
function attackerServer() {
  const forms = [
    ['drain', `${BASE}/dashboard/api/runner/drain`],
    ['stop', `${BASE}/dashboard/api/exercises/${EXERCISE}/stop-sessions`],
  ];
  const html = `<!doctype html><title>A page on another origin</title><h1>Win a prize</h1>${forms
    .map(([id, action]) => `<form id="${id}" method="post" action="${action}"><input name="x-csrf-token" value="guess"><button>${id}</button></form>`)
    .join('')}`;
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(html);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function attack(origin) {
  const results = [];
  for (const [id, suffix] of [['drain', '/dashboard/api/runner/drain'], ['stop', `/dashboard/api/exercises/${EXERCISE}/stop-sessions`]]) {
    await page.goto(`${origin}/attack`, { waitUntil: 'domcontentloaded' });
    // A form post (no preflight, the browser sends whatever cookie SameSite allows).
    const [resp] = await Promise.all([page.waitForResponse((r) => r.url() === `${BASE}${suffix}`, { timeout: 10000 }), page.click(`#${id} button`)]);
    results.push([`form ${id}`, resp.status(), await resp.text().catch(() => '')]);
    if (id === 'drain') {
      await page.waitForLoadState('domcontentloaded');
      await shot(`cross-site-${new URL(origin).hostname.replace(/\./g, '-')}`);
    }
    // And a script's no-cors POST and DELETE.
    await page.goto(`${origin}/attack`, { waitUntil: 'domcontentloaded' });
    const [resp2] = await Promise.all([
      page.waitForResponse((r) => r.url() === `${BASE}${suffix}` && r.request().method() === 'POST', { timeout: 10000 }),
      page.evaluate((u) => fetch(u, { method: 'POST', mode: 'no-cors', credentials: 'include', body: 'x' }).catch(() => null), `${BASE}${suffix}`),
    ]);
    results.push([`fetch ${id}`, resp2.status(), '']);
  }
  // A DELETE needs a preflight the runner never answers: the browser does not even send it.
  const deleted = await page.evaluate(
    (u) => fetch(u, { method: 'DELETE', credentials: 'include' }).then((r) => `sent: ${r.status}`, (e) => `blocked: ${e.message}`),
    `${BASE}/dashboard/api/sessions/${SESSION_ID}`,
  );
  // And the page cannot read the CSRF token.
  const read = await page.evaluate(
    (u) => fetch(u, { credentials: 'include' }).then((r) => r.text(), (e) => `blocked: ${e.message}`),
    `${BASE}/dashboard/api/me`,
  );
  return { results, deleted, read };
}

async function main() {
  await step('launch chromium', 30000, async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        // A cross-site origin whose traffic still goes to loopback.
        '--host-resolver-rules=MAP evil.test 127.0.0.1',
      ],
    });
    const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
    page = await context.newPage();
    page.setDefaultTimeout(15000);
    page.on('dialog', (d) => d.accept());
    page.on('console', (m) => {
      consoleLines.push(`[console.${m.type()}] ${m.text()}`);
      if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
    });
    page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
    page.on('response', (r) => {
      if (r.status() >= 400) consoleLines.push(`[http ${r.status()}] ${r.request().method()} ${r.url()}`);
    });
  });

  await step('without a cookie the dashboard sends the browser to sign in', 20000, async () => {
    const res = await page.goto(`${BASE}/dashboard/`, { waitUntil: 'domcontentloaded' });
    if (!page.url().endsWith('/dashboard/login')) throw new Error(`landed on ${page.url()}`);
    if (res.status() !== 200) throw new Error(`the sign-in page answered ${res.status()}`);
    await page.waitForSelector('input[name=token]');
    await shot('login');
  });

  await step('a wrong token is refused and sets no cookie', 20000, async () => {
    await page.fill('input[name=token]', `${OPERATOR_TOKEN}-wrong`);
    const [resp] = await Promise.all([page.waitForResponse((r) => r.url() === `${BASE}/dashboard/login` && r.request().method() === 'POST'), page.click('button[type=submit]')]);
    if (resp.status() !== 401) throw new Error(`a wrong token answered ${resp.status()}`);
    if (resp.headers()['set-cookie']) throw new Error('a wrong token got a cookie');
    await page.waitForSelector('#login-error');
    const cookies = await page.context().cookies();
    if (cookies.length) throw new Error(`cookies after a refused sign-in: ${JSON.stringify(cookies)}`);
    await shot('login-refused');
  });

  await step('the operator token signs in', 20000, async () => {
    await page.fill('input[name=token]', OPERATOR_TOKEN);
    await Promise.all([page.waitForURL(`${BASE}/dashboard/`), page.click('button[type=submit]')]);
    const [cookie] = await page.context().cookies();
    if (!cookie || !cookie.httpOnly || cookie.sameSite !== 'Strict' || cookie.path !== '/') throw new Error(`cookie: ${JSON.stringify(cookie)}`);
    if (cookie.value.includes(OPERATOR_TOKEN)) throw new Error('the cookie holds the token');
    await until('"signed in with the operator token"', 10000, async () => /operator token/.test((await page.textContent('#whoami')) || ''));
  });

  await step('the overview shows capacity, states, latency, the drain switch, the nodes and problems', 30000, async () => {
    await until('the capacity cards', 15000, async () => (await page.locator('.grid.capacity .card').count()) >= 6);
    const live = await page.textContent('[data-figure=sessions]');
    if (!/^2\s*\/\s*\d+/.test(live.trim())) throw new Error(`sessions card says ${JSON.stringify(live)}`);
    const running = await page.textContent('[data-state=running]');
    if (Number(running) !== 2) throw new Error(`running sessions: ${running}`);
    const p50 = (await page.textContent('#latency-p50')).trim();
    if (!/\d/.test(p50)) throw new Error(`p50 start latency: ${p50}`);
    await page.waitForSelector('#drain');
    // The warm pool of dash-pool: one ready sandbox, its target between 1 and 2.
    await until('the pool of dash-pool with one ready', 20000, async () => {
      const cell = page.locator('#pools tr[data-exercise="dash-pool"] [data-figure=ready]');
      return (await cell.count()) === 1 && /^1/.test((await cell.textContent()).trim());
    });
    // The one node of a single host, up and active, with its two live sessions.
    await until('the node local in the nodes table', 15000, async () => {
      const row = page.locator('#nodes tr[data-node="local"]');
      if ((await row.count()) !== 1) return false;
      const text = await row.textContent();
      const sessions = (await row.locator('[data-figure=node-sessions]').textContent()).trim();
      return /up/.test(text) && /active/.test(text) && /^2\s*\/\s*\d+/.test(sessions);
    });
    // The memory bomb the test set off beside the held memory is a problem worth telling.
    await until('the OOM kill among the problems', 20000, async () => /OOM kill: .*on /.test(await page.textContent('#problems')));
    await shot('overview');
  });

  await step('the sessions page lists the session with the memory it holds', 45000, async () => {
    await page.evaluate(() => (window.__noReload = true));
    await page.click('#nav a[data-nav=sessions]');
    const row = `#sessions-table tr[data-session="${SESSION_ID}"]`;
    await page.waitForSelector(row, { timeout: 15000 });
    const figure = await until('memory within 10 % of what is held', 30000, async () => {
      const m = await page.evaluate((sel) => {
        const cell = document.querySelector(`${sel} td.mem`);
        return cell ? { bytes: Number(cell.dataset.bytes), label: cell.textContent } : null;
      }, row);
      if (!m || !m.bytes) return null;
      const grew = (m.bytes - BASELINE) / HELD;
      return grew >= 0.9 && grew <= 1.1 ? { ...m, grew } : null;
    });
    const shown = parseFloat(figure.label);
    if (Math.abs(shown - figure.bytes / MIB) > 1) throw new Error(`the bar says ${figure.label} for ${figure.bytes} bytes`);
    log(`  memory shown: ${figure.label} (held ${(HELD / MIB).toFixed(0)} MiB over a ${(BASELINE / MIB).toFixed(1)} MiB baseline: ${(figure.grew * 100).toFixed(1)} %)`);
    const cells = await page.$$eval(`${row} td`, (tds) => tds.map((t) => t.textContent.trim()));
    if (cells[0] !== LEARNER || cells[1] !== EXERCISE || cells[2] !== 'running') throw new Error(`row: ${JSON.stringify(cells)}`);
    if (!/%/.test(cells[5]) || !/\d/.test(cells[7]) || !/MiB|KiB/.test(cells[8])) throw new Error(`CPU, pids, disk: ${JSON.stringify(cells)}`);
  });

  await step('the sessions page updates itself, filters and sorts', 30000, async () => {
    const count = async () => Number(await page.getAttribute('#updated', 'data-count'));
    const before = await count();
    await until('two refreshes without a reload', 15000, async () => (await count()) >= before + 2 && (await page.evaluate(() => window.__noReload === true)));
    const row = `#sessions-table tr[data-session="${SESSION_ID}"]`;
    // Sorted by memory, largest first: the session holding 64 MiB leads the other learner's.
    await page.click('th[data-sort=memory]');
    await until('sorted by memory, largest first', 10000, async () => {
      const order = await page.$$eval('#sessions-table tbody tr[data-session]', (trs) => trs.map((t) => t.dataset.session));
      return (await page.getAttribute('th[data-sort=memory]', 'aria-sort')) === 'descending' && order.length >= 2 && order[0] === SESSION_ID;
    });
    await shot('sessions');
    await page.fill('#filter-learner', 'nobody-by-this-name');
    await until('the row filtered out', 5000, async () => (await page.locator(row).count()) === 0);
    await page.fill('#filter-learner', LEARNER.slice(0, 3));
    await until('the row back', 5000, async () => (await page.locator(row).count()) === 1);
    await page.selectOption('#filter-exercise', EXERCISE);
    await page.fill('#filter-learner', '');
    await until('only the exercise\'s session', 10000, async () => (await page.locator(row).count()) === 1 && (await page.locator('#sessions-table tbody tr[data-session]').count()) === 1);
    await page.selectOption('#filter-exercise', '');
  });

  await step('the session page draws its charts and lists its events and checks', 45000, async () => {
    await page.click(`#sessions-table tr[data-session="${SESSION_ID}"] a`);
    await page.waitForURL(`${BASE}/dashboard/#/sessions/${SESSION_ID}`);
    await until('two charts with points', 30000, async () =>
      page.evaluate(() => ['chart-cpu', 'chart-memory'].every((id) => {
        const el = document.getElementById(id);
        return el && el.querySelector('canvas') && Number(el.dataset.points) >= 2;
      })),
    );
    await page.waitForSelector('#events li[data-kind=started]');
    await page.waitForSelector('#events li[data-kind=oom_killed]');
    await page.waitForSelector('#checks li');
    const bytes = Number(await page.getAttribute('#figure-memory', 'data-bytes'));
    const grew = (bytes - BASELINE) / HELD;
    if (grew < 0.9 || grew > 1.1) throw new Error(`the session page shows ${bytes} bytes (${(grew * 100).toFixed(1)} % of what is held)`);
    if (!(await page.isEnabled('#stop-session'))) throw new Error('the stop button is disabled');
    await shot('session');
  });

  await step('pages on other origins cannot act', 60000, async () => {
    const server = await attackerServer();
    const port = server.address().port;
    try {
      for (const origin of [`http://127.0.0.1:${port}`, `http://evil.test:${port}`]) {
        const { results, deleted, read } = await attack(origin);
        for (const [what, status, body] of results) {
          if (status !== 403) throw new Error(`${origin}: ${what} answered ${status} ${body}`);
          if (body && !/cross_site_request/.test(body)) throw new Error(`${origin}: ${what}: ${body}`);
        }
        if (!deleted.startsWith('blocked')) throw new Error(`${origin}: a cross-origin DELETE was ${deleted}`);
        if (!read.startsWith('blocked')) throw new Error(`${origin}: read the dashboard's me: ${read.slice(0, 200)}`);
        log(`  ${origin}: ${results.map(([w, s]) => `${w} ${s}`).join(', ')}; DELETE ${deleted}`);
      }
    } finally {
      server.close();
    }
    const runner = await api('/v1/runner');
    if (runner.draining) throw new Error('the runner was drained by another origin');
    const s = await api(`/v1/sessions/${SESSION_ID}`);
    if (s.state !== 'running') throw new Error(`the session is ${s.state} after the attacks`);
    const { entries } = await api('/v1/audit?limit=50');
    const acted = entries.filter((e) => ['runner.drain', 'exercise.stop_sessions', 'session.stop'].includes(e.action));
    if (acted.length) throw new Error(`audit entries from the attacks: ${JSON.stringify(acted)}`);
  });

  await step('drain and undrain from the overview', 30000, async () => {
    await page.goto(`${BASE}/dashboard/#/`, { waitUntil: 'domcontentloaded' });
    await page.click('#drain');
    await until('draining', 10000, async () => (await page.getAttribute('#drain-state', 'data-draining')) === 'true');
    if (!(await api('/v1/runner')).draining) throw new Error('the API does not say draining');
    await page.waitForSelector('#undrain');
    await shot('overview-drained');
    await page.click('#undrain');
    await until('taking sessions again', 10000, async () => (await page.getAttribute('#drain-state', 'data-draining')) === 'false');
    if ((await api('/v1/runner')).draining) throw new Error('the API still says draining');
  });

  if (BUILD_ID) {
    await step('the builds page lists the build and shows its log', 30000, async () => {
      await page.click('#nav a[data-nav=builds]');
      await page.waitForSelector(`#recent-builds tr[data-build="${BUILD_ID}"]`);
      await page.click(`#recent-builds tr[data-build="${BUILD_ID}"] a`);
      await until('the log', 15000, async () => ((await page.textContent('#log')) || '').length > 50);
      await until('the log followed to its end', 15000, async () => (await page.textContent('#log-state')) === 'ended');
      const text = await page.textContent('#log');
      if (!/self-test|Step|correct/i.test(text)) throw new Error(`the build log: ${text.slice(0, 400)}`);
      await shot('builds');
    });
  }

  await step('the runs page shows runs by runtime and status', 20000, async () => {
    await page.click('#nav a[data-nav=runs]');
    await page.waitForSelector('#run-counts tr[data-source="python3"] td[data-status="accepted"]');
    const accepted = await page.textContent('#run-counts tr[data-source="python3"] td[data-status="accepted"]');
    const wrong = await page.textContent('#run-counts tr[data-source="python3"] td[data-status="wrong_answer"]');
    if (accepted.trim() !== '2' || wrong.trim() !== '1') throw new Error(`counts: accepted ${accepted}, wrong_answer ${wrong}`);
    await page.waitForSelector('#runs tr[data-status="wrong_answer"]');
    const slots = await page.textContent('#runs-slots');
    if (!/^\d+$/.test(slots.trim())) throw new Error(`slots: ${slots}`);
    await shot('runs');
  });

  await step('the audit page lists the operator token', 20000, async () => {
    await page.click('#nav a[data-nav=audit]');
    await page.waitForSelector('#audit tr[data-action="runner.drain"][data-actor="operator-token"]');
    await shot('audit');
  });

  await step('the stop button ends the session', 45000, async () => {
    await page.goto(`${BASE}/dashboard/#/sessions/${SESSION_ID}`, { waitUntil: 'domcontentloaded' });
    await page.waitForSelector('#stop-session:not([disabled])');
    await page.click('#stop-session');
    await until('the page to say stopped', 30000, async () => (await page.getAttribute('h1', 'data-state')) === 'stopped');
    await shot('session-stopped');
  });

  await step('sign out', 20000, async () => {
    await Promise.all([page.waitForURL(`${BASE}/dashboard/login`), page.click('#sign-out')]);
    await page.goto(`${BASE}/dashboard/`, { waitUntil: 'domcontentloaded' });
    if (!page.url().endsWith('/dashboard/login')) throw new Error(`after signing out: ${page.url()}`);
  });

  await step('no Content-Security-Policy violation', 1000, async () => {
    if (cspViolations.length) throw new Error(`CSP violations:\n  ${cspViolations.join('\n  ')}`);
  });
}

let exitCode = 0;
try {
  await main();
  log('PASS: the dashboard works end to end');
} catch (e) {
  exitCode = 1;
  log(`FAIL in step "${currentStep}": ${e.stack || e}`);
  if (page) {
    const file = path.join(ARTIFACTS, `dashboard-failed-${currentStep.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}.png`);
    await page.screenshot({ path: file, fullPage: true, timeout: 10000 }).then(() => log(`  screenshot: ${file}`), () => {});
  }
  log(`browser console and network (${consoleLines.length} lines):`);
  for (const line of consoleLines) console.log(`  ${line}`);
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit(exitCode);
