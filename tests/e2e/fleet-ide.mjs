#!/usr/bin/env node
// The IDE of a session on one fleet node, opened in real headless Chromium through another
// node's runner (tests/fleet.rs).
//
//   IDE_URL=<the session's ide_url, on the relaying runner> ARTIFACTS=<dir> [CHROMIUM=/usr/bin/chromium] \
//   node tests/e2e/fleet-ide.mjs
//
// Steps: open the IDE; wait for a terminal with a prompt; run `echo fleet-$((6*7))` and see
// `fleet-42`; create a file from the terminal; reload and see it in the file tree (a page load,
// the file API and a new terminal socket, all relayed). Every wait polls against a deadline.
// On failure: $ARTIFACTS/<step>.png, the error and the browser's console, exit 1. On success:
// $ARTIFACTS/fleet-ide.png, exit 0.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const IDE_URL = process.env.IDE_URL;
const ARTIFACTS = path.resolve(process.env.ARTIFACTS || 'target/test-artifacts/fleet');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!IDE_URL) {
  console.error('fleet-ide.mjs: IDE_URL is required');
  process.exit(2);
}
fs.mkdirSync(ARTIFACTS, { recursive: true });

const t0 = Date.now();
const log = (msg) => console.log(`[fleet-ide ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}`);
const consoleLines = [];
let browser;
let page;
let current = 'launch';

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

async function step(name, fn) {
  current = name;
  log(`STEP ${name}`);
  await fn();
}

const terminalLines = () =>
  page.evaluate(() => {
    const rows = document.querySelector('#terminals .terminal-view.active .xterm-rows');
    return rows ? [...rows.children].map((r) => r.textContent.replace(/\u00a0/g, ' ')) : null;
  });

const waitForPrompt = () =>
  until('a terminal with a prompt', 30000, async () => {
    const lines = await terminalLines();
    return lines && lines.some((l) => /[$#] ?$/.test(l.trimEnd() + ' ') && l.trim().length > 1);
  });

async function main() {
  await step('launch chromium', async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
    });
    page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    page.setDefaultTimeout(15000);
    page.on('console', (m) => consoleLines.push(`[console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
    page.on('response', (r) => {
      if (r.status() >= 400) consoleLines.push(`[http ${r.status()}] ${r.request().method()} ${r.url()}`);
    });
  });
  await step('open the IDE through the relaying runner', async () => {
    const res = await page.goto(IDE_URL, { waitUntil: 'domcontentloaded', timeout: 30000 });
    if (!res || !res.ok()) throw new Error(`GET IDE_URL answered ${res ? res.status() : 'nothing'}`);
  });
  await step('wait for a terminal', waitForPrompt);
  await step('run a command in the terminal', async () => {
    await page.click('#terminals .terminal-view.active .xterm');
    await page.keyboard.type('echo fleet-$((6*7)); echo relayed > from-the-browser.txt');
    await page.keyboard.press('Enter');
    await until('the line fleet-42', 15000, async () => (await terminalLines())?.some((l) => l.trim() === 'fleet-42'));
  });
  await step('reload and see the file in the tree', async () => {
    await page.reload({ waitUntil: 'domcontentloaded' });
    await until('from-the-browser.txt in the file tree', 20000, () =>
      page.evaluate(() => !!document.querySelector('#file-tree [data-path="from-the-browser.txt"]')),
    );
    await waitForPrompt();
  });
  await step('screenshot', async () => {
    await page.screenshot({ path: path.join(ARTIFACTS, 'fleet-ide.png'), fullPage: true });
    log(`screenshot: ${path.join(ARTIFACTS, 'fleet-ide.png')}`);
  });
}

try {
  await main();
  await browser.close();
  process.exit(0);
} catch (e) {
  console.error(`FAILED at "${current}": ${e.message}`);
  for (const l of consoleLines.slice(-40)) console.error(l);
  if (page) {
    const shot = path.join(ARTIFACTS, `${current.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}.png`);
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    console.error(`screenshot: ${shot}`);
  }
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
