#!/usr/bin/env node
// End-to-end test of the browser IDE in real headless Chromium (playwright-core, system Chromium).
//
//   IDE_URL=<full /ide/{session}/?token=... URL the runner returned> \
//   CONTAINER=<docker id of the session's sandbox> ARTIFACTS=<dir for screenshots> \
//   EDIT_FILE=fizzbuzz.py EXPECT_VERDICT=Failed [CHROMIUM=/usr/bin/chromium] node tests/e2e/ide.mjs
//
// Steps: open the IDE; wait for a terminal; run `echo $((6*7))` and see `42`; open EDIT_FILE from
// the file tree; append a line; Ctrl-S; see "Saved"; check the file inside the container with
// `docker exec`; reload and see `42` again (the replayed scrollback); click Check and see
// EXPECT_VERDICT; click Start over, cancel its confirmation (nothing changes), click it again and
// confirm: the edited file is back to its starting content in the container and the file tree
// is refreshed ($ARTIFACTS/start-over-dialog.png, start-over.png); with END_SESSION_URL and API_TOKEN, end the session through the API and see
// the page say so. Every wait polls against a deadline. On failure: a full-page screenshot
// $ARTIFACTS/<step>.png, the error and the browser's console, exit 1. On success:
// $ARTIFACTS/ide.png, exit 0.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const t0 = Date.now();
const log = (msg) => console.log(`[e2e ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}`);

function env(name, fallback) {
  const v = process.env[name];
  if (v !== undefined && v !== '') return v;
  if (fallback !== undefined) return fallback;
  console.error(`ide.mjs: the environment variable ${name} is required`);
  process.exit(2);
}

const IDE_URL = env('IDE_URL');
const CONTAINER = env('CONTAINER');
const ARTIFACTS = path.resolve(env('ARTIFACTS'));
const EDIT_FILE = env('EDIT_FILE').replace(/^\/+/, '');
const EXPECT_VERDICT = env('EXPECT_VERDICT');
const CHROMIUM = env('CHROMIUM', '/usr/bin/chromium');
const CHECK_TIMEOUT_MS = Number(env('CHECK_TIMEOUT_MS', '180000'));
// Optional: the runner's URL of this session and a token to DELETE it with; the page must then
// say the session ended, and the Check button go disabled.
const END_SESSION_URL = env('END_SESSION_URL', '');
const API_TOKEN = env('API_TOKEN', '');
const WORKDIR = '/workspace';
const EDIT_LINE = '# edited in the browser';

if (!['Passed', 'Failed'].includes(EXPECT_VERDICT)) {
  console.error('ide.mjs: EXPECT_VERDICT must be Passed or Failed');
  process.exit(2);
}
fs.mkdirSync(ARTIFACTS, { recursive: true });

// The directory the IDE lives in (/ide/{session}/): every request the page makes must stay in it.
const ideBase = new URL('.', IDE_URL);
const scopeOf = (u) => `${u.host}${u.pathname}`;

// ------------------------------------------------------------------ helpers

const consoleLines = [];
const offScope = [];
let browser;
let page;
let currentStep = 'launch';

/** Polls fn() until it returns a truthy value or the deadline passes; returns that value. */
async function until(what, timeoutMs, fn, intervalMs = 100) {
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

/** Runs one named step with an overall deadline and a log line before and after. */
async function step(name, timeoutMs, fn) {
  currentStep = name;
  log(`STEP ${name} (timeout ${timeoutMs / 1000}s) ...`);
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

/** The text lines of the active terminal (xterm's DOM renderer puts them in .xterm-rows). */
async function terminalLines() {
  return page.evaluate(() => {
    const rows = document.querySelector('#terminals .terminal-view.active .xterm-rows');
    if (!rows) return null;
    return [...rows.children].map((r) => r.textContent.replace(/\u00a0/g, ' '));
  });
}

async function waitForTerminalLine(expected, timeoutMs) {
  await until(`a terminal line "${expected}"`, timeoutMs, async () => {
    const lines = await terminalLines();
    return lines && lines.some((l) => l.trim() === expected);
  });
}

async function waitForTerminal(timeoutMs) {
  await until('an open terminal with a prompt', timeoutMs, () =>
    page.evaluate(() => {
      const tab = document.querySelector('#terminals [data-terminal].active');
      const rows = document.querySelector('#terminals .terminal-view.active .xterm-rows');
      return !!(tab && tab.dataset.state === 'open' && rows && rows.textContent.trim().length > 0);
    }),
  );
}

function fileInContainer() {
  return execFileSync('docker', ['exec', CONTAINER, 'cat', `${WORKDIR}/${EDIT_FILE}`], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 15000,
  });
}

const hasEditLine = (text) => text.split('\n').some((l) => l.trim() === EDIT_LINE);

function slug(s) {
  return s.replace(/[^a-z0-9]+/gi, '-').replace(/^-|-$/g, '').toLowerCase() || 'failure';
}

// ------------------------------------------------------------------ the test

async function main() {
  await step('launch chromium', 30000, async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      // playwright-core gives every launch a fresh temporary --user-data-dir.
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    page = await context.newPage();
    page.setDefaultTimeout(15000);
    page.on('console', (m) => consoleLines.push(`[console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
    page.on('requestfailed', (r) => consoleLines.push(`[requestfailed] ${r.method()} ${r.url()} ${r.failure()?.errorText ?? ''}`));
    page.on('response', (r) => {
      if (r.status() >= 400) consoleLines.push(`[http ${r.status()}] ${r.request().method()} ${r.url()}`);
    });
    page.on('request', (r) => {
      const u = new URL(r.url());
      if (u.protocol === 'data:' || u.protocol === 'blob:') return;
      if (!scopeOf(u).startsWith(scopeOf(ideBase))) offScope.push(`${r.method()} ${r.url()}`);
    });
    page.on('websocket', (ws) => {
      consoleLines.push(`[websocket] open ${ws.url()}`);
      ws.on('close', () => consoleLines.push(`[websocket] closed ${ws.url()}`));
      if (!scopeOf(new URL(ws.url())).startsWith(scopeOf(ideBase))) offScope.push(`WS ${ws.url()}`);
    });
  });

  await step('open the IDE', 30000, async () => {
    const res = await page.goto(IDE_URL, { waitUntil: 'domcontentloaded', timeout: 30000 });
    if (!res || !res.ok()) throw new Error(`GET IDE_URL answered ${res ? res.status() : 'nothing'}`);
    await until('the file tree and the editor', 20000, () =>
      page.evaluate(() => !!document.querySelector('#file-tree [data-path]') && !!document.getElementById('editor')),
    );
  });

  await step('see the task (README.md) open in the editor at first load', 20000, async () => {
    await until('README.md in the editor', 15000, () =>
      page.evaluate(
        () =>
          !document.querySelector('#file-tree [data-path="README.md"]') ||
          (document.getElementById('current-file')?.textContent === 'README.md' &&
            !!document.querySelector('#editor .cm-content')),
      ),
    );
  });

  await step('wait for a terminal', 30000, () => waitForTerminal(30000));

  await step('see the shell prompt without pressing a key', 15000, () =>
    until('a prompt line ending in "$ "', 10000, async () => {
      const lines = await terminalLines();
      return lines && lines.some((l) => /[$#] ?$/.test(l.trimEnd() + ' ') && l.trim().length > 1);
    }),
  );

  await step('run echo $((6*7)) in the terminal', 20000, async () => {
    await page.click('#terminals .terminal-view.active .xterm');
    await page.keyboard.type('echo $((6*7))');
    await page.keyboard.press('Enter');
    await waitForTerminalLine('42', 15000);
  });

  await step(`open ${EDIT_FILE} from the file tree`, 20000, async () => {
    // Unfold the directories above the file, if any are folded.
    const parts = EDIT_FILE.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = page.locator(`#file-tree [data-path="${parts.slice(0, i).join('/')}"]`);
      await dir.waitFor({ state: 'visible', timeout: 10000 });
      if ((await dir.getAttribute('aria-expanded')) === 'false') await dir.click();
    }
    await page.locator(`#file-tree [data-path="${EDIT_FILE}"]`).click({ timeout: 10000 });
    await until(`the editor to show ${EDIT_FILE}`, 15000, () =>
      page.evaluate(
        (p) =>
          document.getElementById('current-file')?.textContent === p &&
          !!document.querySelector('#editor .cm-content') &&
          document.getElementById('editor-placeholder')?.hidden !== false,
        EDIT_FILE,
      ),
    );
  });

  await step('type a line at the end of the document', 15000, async () => {
    const activeLine = () => page.evaluate(() => document.querySelector('#editor .cm-activeLine')?.textContent ?? null);
    // Enter, then remove the indentation the editor may have added (so the line is exactly ours).
    const newline = async () => {
      await page.keyboard.press('Escape'); // close a completion popup, if one is open
      await page.keyboard.press('Enter');
      for (let i = 0; i < 40; i++) {
        const text = await activeLine();
        if (!text || text.trim() !== '') break;
        await page.keyboard.press('Backspace');
      }
    };
    await page.click('#editor .cm-content');
    await page.keyboard.press('Control+End');
    const endsWithNewline = (await activeLine()) === '';
    if (!endsWithNewline) await newline();
    await page.keyboard.type(EDIT_LINE);
    if (endsWithNewline) await newline(); // keep the file's final newline
    await until('the typed line in the editor', 5000, () =>
      page.evaluate(
        (line) => [...document.querySelectorAll('#editor .cm-line')].some((l) => l.textContent === line),
        EDIT_LINE,
      ),
    );
  });

  await step('save with Ctrl-S', 20000, async () => {
    await page.keyboard.press('Control+s');
    await until('#save-status to say Saved', 15000, async () => {
      const status = (await page.textContent('#save-status'))?.trim() ?? '';
      if (/fail|error/i.test(status)) throw new Error(`#save-status says "${status}"`);
      return status === 'Saved';
    });
  });

  await step(`verify ${WORKDIR}/${EDIT_FILE} in container ${CONTAINER.slice(0, 12)}`, 20000, async () => {
    let last = '';
    await until(`the line "${EDIT_LINE}" in the container's file`, 15000, () => {
      last = fileInContainer();
      return hasEditLine(last);
    }, 250).catch((e) => {
      throw new Error(`${e.message}; the file ends with: ${JSON.stringify(last.slice(-200))}`);
    });
  });

  await step('reload the page', 30000, async () => {
    const res = await page.reload({ waitUntil: 'domcontentloaded', timeout: 30000 });
    if (!res || !res.ok()) throw new Error(`reload answered ${res ? res.status() : 'nothing'}`);
  });

  await step('see 42 again (replayed scrollback)', 30000, async () => {
    await waitForTerminal(20000);
    await waitForTerminalLine('42', 20000);
  });

  await step(`click Check and expect ${EXPECT_VERDICT}`, CHECK_TIMEOUT_MS + 10000, async () => {
    await until('#check to be enabled', 10000, () => page.isEnabled('#check'));
    await page.click('#check');
    const verdict = await until('a verdict', CHECK_TIMEOUT_MS, async () => {
      const v = (await page.textContent('#verdict'))?.trim() ?? '';
      const cls = (await page.getAttribute('#verdict', 'class')) ?? '';
      return v === 'Passed' || v === 'Failed' || cls.includes('error') ? v : null;
    }, 200);
    if (verdict !== EXPECT_VERDICT) {
      const meta = (await page.textContent('#check-meta'))?.trim() ?? '';
      const out = `${meta}\n${(await page.textContent('#check-text')) ?? ''}`.trim();
      throw new Error(`#verdict says "${verdict}", expected "${EXPECT_VERDICT}"; check output:\n${out.slice(0, 2000)}`);
    }
    const cls = (await page.getAttribute('#verdict', 'class')) ?? '';
    if (!cls.split(/\s+/).includes(EXPECT_VERDICT.toLowerCase()))
      throw new Error(`#verdict has classes "${cls}", expected "${EXPECT_VERDICT.toLowerCase()}"`);
    // The learner sees what the tests said, not only the verdict.
    await until('the check output panel', 10000, async () => {
      const shown = (await page.getAttribute('#check-output', 'hidden')) === null;
      const meta = (await page.textContent('#check-meta'))?.trim() ?? '';
      const text = (await page.textContent('#check-text'))?.trim() ?? '';
      return shown && /exit code/.test(meta) && text.length > 0;
    });
  });

  await step('every request stayed under the IDE path', 5000, async () => {
    const bad = offScope.filter((r) => !/\/favicon\.ico$/.test(r));
    if (bad.length) throw new Error(`requests outside ${ideBase.pathname}:\n  ${bad.join('\n  ')}`);
  });

  await step('screenshot', 15000, async () => {
    await page.screenshot({ path: path.join(ARTIFACTS, 'ide.png'), fullPage: true });
    log(`  screenshot: ${path.join(ARTIFACTS, 'ide.png')}`);
  });

  await step('Start over asks first; Cancel changes nothing', 15000, async () => {
    await until('#start-over to be enabled', 10000, () => page.isEnabled('#start-over'));
    await page.click('#start-over');
    await until('the confirmation dialog', 5000, () => page.isVisible('#start-over-dialog'));
    await page.screenshot({ path: path.join(ARTIFACTS, 'start-over-dialog.png'), fullPage: true });
    log(`  screenshot: ${path.join(ARTIFACTS, 'start-over-dialog.png')}`);
    await page.click('#start-over-cancel');
    await until('the dialog to close', 5000, async () => !(await page.isVisible('#start-over-dialog')));
    if (!hasEditLine(fileInContainer())) throw new Error('Cancel changed the learner\'s file');
  });

  await step('Start over, confirmed: the starting files come back and the tree refreshes', 60000, async () => {
    await page.click('#start-over');
    await until('the confirmation dialog', 5000, () => page.isVisible('#start-over-dialog'));
    await page.click('#start-over-confirm');
    await until('the "Started over" banner', 45000, async () => {
      const text = (await page.textContent('#banner'))?.trim() ?? '';
      if (/could not start over/i.test(text)) throw new Error(`#banner says "${text}"`);
      return /Started over/.test(text) ? text : null;
    });
    await until(`${EDIT_FILE} back to its starting content in the container`, 15000, () => !hasEditLine(fileInContainer()), 250);
    await until(`${EDIT_FILE} in the refreshed file tree`, 10000, async () =>
      (await page.textContent('#file-tree'))?.includes(EDIT_FILE),
    );
    const current = (await page.textContent('#current-file'))?.trim() ?? '';
    if (current !== 'No file open') throw new Error(`the editor still shows "${current}" from before`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'start-over.png'), fullPage: true });
    log(`  screenshot: ${path.join(ARTIFACTS, 'start-over.png')}`);
  });

  if (END_SESSION_URL) {
    await step('end the session through the API and see the page say so', 30000, async () => {
      const r = await fetch(END_SESSION_URL, { method: 'DELETE', headers: { authorization: `Bearer ${API_TOKEN}` } });
      if (r.status !== 200) throw new Error(`DELETE ${END_SESSION_URL}: ${r.status} ${await r.text()}`);
      await until('the "session ended" banner', 25000, async () => {
        const hidden = await page.getAttribute('#banner', 'hidden');
        const cls = (await page.getAttribute('#banner', 'class')) ?? '';
        const text = (await page.textContent('#banner'))?.trim() ?? '';
        return hidden === null && cls === 'ended' && /session has ended/.test(text) ? text : null;
      });
      if (!(await page.isDisabled('#check'))) throw new Error('the Check button is still enabled');
      await page.screenshot({ path: path.join(ARTIFACTS, 'ended.png'), fullPage: true });
    });
  }
}

let exitCode = 0;
try {
  await main();
  log('PASS: the IDE works end to end');
} catch (e) {
  exitCode = 1;
  log(`FAIL in step "${currentStep}": ${e.stack || e}`);
  if (page) {
    const shot = path.join(ARTIFACTS, `${slug(currentStep)}.png`);
    try {
      await page.screenshot({ path: shot, fullPage: true, timeout: 10000 });
      log(`  screenshot: ${shot}`);
    } catch (se) {
      log(`  (no screenshot: ${se.message})`);
    }
    try {
      const lines = await terminalLines();
      if (lines) log(`  active terminal:\n    ${lines.filter((l) => l.trim()).join('\n    ')}`);
    } catch {
      /* page gone */
    }
  }
  log(`browser console and network (${consoleLines.length} lines):`);
  for (const line of consoleLines) console.log(`  ${line}`);
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit(exitCode);
