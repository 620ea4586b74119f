#!/usr/bin/env node
// The attack of issue 15 (3) in real headless Chromium: session A's learner replaced the IDE
// agent with tests/e2e/hostile-agent.py (HTML with a script, Set-Cookie for the whole origin, a
// cookie bomb). One browser (one cookie jar) opens A's IDE, then B's.
//
//   IDE_A=<A's ide_url> SESSION_B=<B's id> IDE_B=<B's ide_url> B_FILE=<a file in B's workspace>
//   ARTIFACTS=<dir> [SEPARATE_ORIGINS=1] [CHROMIUM=/usr/bin/chromium] node tests/e2e/hostile.mjs
//
// Asserts: no script of the sandbox ever runs (its fetch('/pwned') is never requested, no page
// title "pwned"); no cookie the sandbox sent is in the jar, and the IDE cookie is still the
// runner's; the sandbox's answers are attachments; A's page gets nothing of B's IDE; B's IDE
// still works in the same browser afterwards (file tree, a terminal answering). With
// SEPARATE_ORIGINS=1 (RUNNER_IDE_SUBDOMAIN_HOST), also that A and B are different origins and
// B's cookie is not A's. Screenshots: $ARTIFACTS/hostile-a.png, hostile-b.png; on failure
// $ARTIFACTS/failure.png, exit 1.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const t0 = Date.now();
const log = (msg) => console.log(`[hostile ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}`);
function env(name, fallback) {
  const v = process.env[name];
  if (v !== undefined && v !== '') return v;
  if (fallback !== undefined) return fallback;
  console.error(`hostile.mjs: the environment variable ${name} is required`);
  process.exit(2);
}
const IDE_A = env('IDE_A');
const IDE_B = env('IDE_B');
const SESSION_B = env('SESSION_B');
const B_FILE = env('B_FILE');
const ARTIFACTS = path.resolve(env('ARTIFACTS'));
const SEPARATE = env('SEPARATE_ORIGINS', '0') === '1';
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
fs.mkdirSync(ARTIFACTS, { recursive: true });

const evidence = [];
let current;

async function until(what, timeoutMs, fn) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (${last.message.split('\n')[0]})` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function check(ok, what) {
  if (!ok) throw new Error(`FAILED: ${what}`);
  log(`  ok: ${what}`);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: false });
  context.on('request', (r) => {
    if (r.url().includes('pwned')) evidence.push(`request ${r.url()}`);
  });
  context.on('page', (p) => {
    p.on('dialog', (d) => {
      evidence.push(`dialog ${d.message()}`);
      d.dismiss().catch(() => {});
    });
    p.on('console', (m) => log(`[console.${m.type()}] ${m.text()}`));
  });

  log('open A (its agent is the learner\'s fake)');
  const a = await context.newPage();
  current = a;
  const res = await a.goto(IDE_A, { waitUntil: 'load' });
  check(res && res.ok(), `A's page loads (${res && res.status()})`);
  check(await a.evaluate(() => !!document.getElementById('file-tree')), "A's page is the runner's IDE page");
  // The page's own requests reach the fake agent; wait until it has answered a few.
  await until('the page asking the agent', 15000, () => a.evaluate(() => performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/')).length >= 2));
  const answer = await a.evaluate(async () => {
    const r = await fetch('api/anything', { credentials: 'same-origin' });
    return { status: r.status, type: r.headers.get('content-type'), disposition: r.headers.get('content-disposition'), csp: r.headers.get('content-security-policy'), body: await r.text() };
  });
  check(answer.status === 200 && answer.body.includes('<script>'), 'the fake agent answered with its script');
  check(answer.type === 'application/octet-stream' && answer.disposition === 'attachment', `...served as an attachment (${answer.type}, ${answer.disposition})`);
  check((answer.csp || '').includes('sandbox'), '...under a sandboxing CSP');
  await a.screenshot({ path: path.join(ARTIFACTS, 'hostile-a.png') });

  log('navigate straight to an agent answer (as a link a learner shares would)');
  const direct = await context.newPage();
  current = direct;
  const base = new URL('.', IDE_A);
  await direct.goto(new URL('api/evil.html', base).href, { waitUntil: 'load' }).catch((e) => log(`  navigation: ${e.message.split('\n')[0]}`));
  check((await direct.title().catch(() => '')) !== 'pwned', 'the agent page did not render as a page');
  await direct.close();
  current = a;

  log('cookies in the jar');
  const jar = await context.cookies();
  log(`  jar: ${jar.map((c) => `${c.name}@${c.domain}${c.path}`).join(', ')}`);
  check(!jar.some((c) => /^(tracking|bomb)/.test(c.name)), 'no cookie planted by the sandbox');
  const ide = jar.filter((c) => c.name === 'exercise_runner_ide');
  check(ide.length === 1 && ide[0].value !== 'attacker' && ide[0].path.startsWith('/ide/') && ide[0].httpOnly, "the IDE cookie is the runner's, for A's path only");

  log("A's page and B's IDE");
  const fromA = await a.evaluate(async (b) => {
    try {
      const r = await fetch(`/ide/${b}/api/files`, { credentials: 'include' });
      return { status: r.status, body: (await r.text()).slice(0, 200) };
    } catch (e) {
      return { status: 0, body: String(e) };
    }
  }, SESSION_B);
  check(fromA.status !== 200 && !fromA.body.includes('entries'), `A's page gets nothing of B's IDE before B logs in (${fromA.status})`);

  log('open B in the same browser, after the cookie bomb');
  const b = await context.newPage();
  current = b;
  const resB = await b.goto(IDE_B, { waitUntil: 'load' });
  check(resB && resB.ok(), `B's page loads (${resB && resB.status()})`);
  await until(`${B_FILE} in B's file tree`, 30000, () => b.evaluate((f) => !!document.querySelector(`#file-tree [data-path="${f}"]`), B_FILE));
  await until("a terminal in B with a prompt", 30000, () => b.evaluate(() => {
    const rows = document.querySelector('#terminals .terminal-view.active .xterm-rows');
    return !!(rows && rows.textContent.trim().length > 0);
  }));
  await b.click('#terminals .terminal-view.active .xterm');
  await b.keyboard.type('echo $((6*7))');
  await b.keyboard.press('Enter');
  await until('42 in B\'s terminal', 15000, () => b.evaluate(() => [...document.querySelectorAll('#terminals .terminal-view.active .xterm-rows > div')].some((r) => r.textContent.replace(/\u00a0/g, ' ').trim() === '42')));
  check(true, "B's IDE works: files and a terminal");
  await b.screenshot({ path: path.join(ARTIFACTS, 'hostile-b.png') });

  if (SEPARATE) {
    const oa = new URL(IDE_A).origin;
    const ob = new URL(IDE_B).origin;
    check(oa !== ob, `A and B are different origins (${oa}, ${ob})`);
    const jar2 = await context.cookies();
    const domains = new Set(jar2.filter((c) => c.name === 'exercise_runner_ide').map((c) => c.domain));
    check(domains.size === 2, `each session's cookie is for its own host (${[...domains].join(', ')})`);
    // A's page asking for B's IDE on A's host is refused; on B's host it is cross-origin and
    // carries nothing back.
    const again = await a.evaluate(async ([b, bOrigin]) => {
      const out = [];
      for (const url of [`/ide/${b}/api/files`, `${bOrigin}/ide/${b}/api/files`]) {
        try {
          const r = await fetch(url, { credentials: 'include' });
          out.push({ status: r.status, body: (await r.text()).slice(0, 100) });
        } catch (e) {
          out.push({ status: 0, body: String(e) });
        }
      }
      return out;
    }, [SESSION_B, ob]);
    log(`  from A: ${JSON.stringify(again)}`);
    check(again.every((r) => r.status !== 200 && !r.body.includes('entries')), "A's page gets nothing of B's IDE");
  }
  check(evidence.length === 0, `no script of the sandbox ran (${evidence.join('; ') || 'no trace'})`);
  log('PASS');
} catch (e) {
  console.error(e.message);
  if (current) await current.screenshot({ path: path.join(ARTIFACTS, 'failure.png'), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
