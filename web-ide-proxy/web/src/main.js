// exercise-runner IDE: top bar (title, Check, verdict), file tree, editor, terminals.
// Served at /ide/{session_id}/ behind the runner's proxy; every URL used here is relative.
import { api } from './api.js';
import { Editor } from './editor.js';
import { FileTree } from './tree.js';
import { Terminals } from './terminals.js';

const $ = (id) => document.getElementById(id);

const els = {
  title: $('title'),
  banner: $('banner'),
  check: $('check'),
  verdict: $('verdict'),
  output: $('check-output'),
  outputMeta: $('check-meta'),
  outputText: $('check-text'),
  toggleOutput: $('toggle-output'),
  closeOutput: $('close-output'),
  tree: $('file-tree'),
  refreshFiles: $('refresh-files'),
  splitter: $('splitter'),
};

let sessionEnded = false;

// ---------- banner ----------

let bannerTimer = null;
// 'ended' stays; other banners (a failed request) go away after a while.
function showBanner(text, kind = 'info') {
  if (els.banner.className === 'ended' && !els.banner.hidden) return;
  clearTimeout(bannerTimer);
  els.banner.textContent = text;
  els.banner.className = kind;
  els.banner.hidden = false;
  if (kind !== 'ended') bannerTimer = setTimeout(() => (els.banner.hidden = true), 8000);
}

// ---------- file tree + editor ----------

const editor = new Editor(
  {
    host: $('editor'),
    placeholder: $('editor-placeholder'),
    save: $('save'),
    status: $('save-status'),
    current: $('current-file'),
    dirtyMark: $('dirty-mark'),
  },
  {
    onDirtyChange: (path, dirty) => tree.setDirty(path, dirty),
    onActiveChange: (path) => {
      tree.setActive(path);
      remember(path);
    },
    onSaved: () => scheduleRefresh(300),
  },
);

const tree = new FileTree(els.tree, {
  onOpen: (path) => editor.open(path),
});

// The open file survives a reload of the page (per session path, per browser tab).
const LAST_FILE_KEY = `ide.lastFile:${location.pathname}`;
function remember(path) {
  try {
    sessionStorage.setItem(LAST_FILE_KEY, path);
  } catch {
    /* storage unavailable */
  }
}
function remembered() {
  try {
    return sessionStorage.getItem(LAST_FILE_KEY);
  } catch {
    return null;
  }
}

let refreshing = null;
let refreshTimer = null;

async function refreshFiles() {
  if (sessionEnded) return;
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const { entries } = await api.files();
      tree.setEntries(entries);
      tree.setActive(editor.current);
    } catch (e) {
      if (!tree.tree) els.tree.innerHTML = '';
      const li = document.createElement('li');
      li.className = 'empty error';
      li.textContent = `Could not list files: ${e.message}`;
      if (!tree.tree) els.tree.append(li);
      console.warn('api/files failed', e);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

function scheduleRefresh(ms = 1500) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshFiles, ms);
}

els.refreshFiles.addEventListener('click', refreshFiles);
// Files change when the learner runs commands; refresh when they come back to the tab, and a
// moment after a command is entered in a terminal. (No polling: background polling would count as
// activity and keep an abandoned session alive.)
window.addEventListener('focus', () => scheduleRefresh(100));
$('save').addEventListener('click', () => editor.save());

// Ctrl-S / Cmd-S saves the open file, wherever the focus is (also in a terminal, where it would
// otherwise send XOFF and seem to freeze the shell).
window.addEventListener(
  'keydown',
  (e) => {
    if (!(e.ctrlKey || e.metaKey) || e.altKey || e.shiftKey) return;
    if (e.code !== 'KeyS' && e.key.toLowerCase() !== 's') return;
    e.preventDefault();
    e.stopPropagation();
    editor.save();
  },
  true,
);

window.addEventListener('beforeunload', (e) => {
  if (!sessionEnded && editor.dirtyPaths.length) {
    e.preventDefault();
    e.returnValue = '';
  }
});

// ---------- check ----------

let checkRunning = false;

function setVerdict(text, kind) {
  els.verdict.textContent = text;
  els.verdict.className = kind || '';
}

function setOutputOpen(open) {
  els.output.hidden = !open;
  els.toggleOutput.setAttribute('aria-expanded', String(open));
  els.toggleOutput.classList.toggle('on', open);
  requestAnimationFrame(() => terminals.fitAll());
}

els.toggleOutput.addEventListener('click', () => setOutputOpen(els.output.hidden));
els.closeOutput.addEventListener('click', () => setOutputOpen(false));

// Check output comes from a process that thinks it writes to a terminal: drop colour codes.
const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

async function runCheck() {
  if (checkRunning || sessionEnded) return;
  checkRunning = true;
  els.check.disabled = true;
  els.check.textContent = 'Checking\u2026';
  setVerdict('Checking\u2026', 'running');
  try {
    // The check runs against the files on disk: save what is open first.
    if (!(await editor.saveAll())) {
      setVerdict('Not checked: a file could not be saved', 'error');
      return;
    }
    const r = await api.check();
    setVerdict(r.passed ? 'Passed' : 'Failed', r.passed ? 'passed' : 'failed');
    const meta = [
      r.passed ? 'Passed' : 'Failed',
      `exit code ${r.exit_code ?? '?'}`,
      typeof r.duration_ms === 'number' ? `${(r.duration_ms / 1000).toFixed(2)} s` : null,
      r.timed_out ? 'timed out' : null,
      r.truncated ? 'output truncated' : null,
    ].filter(Boolean);
    els.outputMeta.textContent = meta.join(' \u00b7 ');
    els.outputMeta.className = r.passed ? 'passed' : 'failed';
    els.outputText.textContent = String(r.output ?? '').replace(ANSI, '') || '(no output)';
    setOutputOpen(true);
  } catch (e) {
    const busy = e.status === 409 || e.status === 503 || e.status === 429;
    setVerdict(busy ? `Check unavailable: ${e.message}` : `Check error: ${e.message}`, 'error');
    els.outputMeta.textContent = `The check did not run (${e.status || 'network'} ${e.code}).`;
    els.outputMeta.className = 'error';
    els.outputText.textContent = e.message;
  } finally {
    checkRunning = false;
    els.check.textContent = 'Check';
    els.check.disabled = sessionEnded;
    scheduleRefresh(200);
  }
}

els.check.addEventListener('click', runCheck);

// ---------- start over ----------

const startOver = {
  button: $('start-over'),
  dialog: $('start-over-dialog'),
};

startOver.button.addEventListener('click', () => {
  if (sessionEnded || checkRunning) return;
  startOver.dialog.showModal();
});

startOver.dialog.addEventListener('close', async () => {
  if (startOver.dialog.returnValue !== 'confirm') return;
  startOver.button.disabled = true;
  startOver.button.textContent = 'Starting over\u2026';
  try {
    const r = await api.startOver();
    editor.closeAll();
    try {
      sessionStorage.removeItem(LAST_FILE_KEY);
    } catch {
      /* storage unavailable */
    }
    setVerdict('', '');
    // The last check's output was about the files that are gone.
    setOutputOpen(false);
    els.outputMeta.textContent = 'No check has run yet.';
    els.outputMeta.className = 'muted';
    els.outputText.textContent = '';
    showBanner(`Started over: your previous files are kept (snapshot ${String(r.snapshot?.id ?? '').slice(0, 8)}).`);
  } catch (e) {
    showBanner(`Could not start over: ${e.message}`, 'error');
  } finally {
    startOver.button.disabled = sessionEnded;
    startOver.button.textContent = 'Start over';
    await refreshFiles();
  }
});

// ---------- terminals ----------

const terminals = new Terminals(
  { tabs: $('terminal-tabs'), views: $('terminal-views'), newButton: $('new-terminal') },
  {
    onCommand: () => scheduleRefresh(1500),
    onError: (msg) => showBanner(msg, 'error'),
    onSessionEnded: () => {
      sessionEnded = true;
      showBanner('This session has ended.', 'ended');
      document.body.classList.add('session-ended');
      els.check.disabled = true;
      startOver.button.disabled = true;
      editor.setReadOnly();
    },
  },
);

// ---------- splitter between the editor and the terminals ----------

const MIN_TERMINAL = 90;
function setTerminalHeight(px) {
  const max = Math.max(MIN_TERMINAL, window.innerHeight - 200);
  const h = Math.round(Math.min(max, Math.max(MIN_TERMINAL, px)));
  document.documentElement.style.setProperty('--terminal-height', `${h}px`);
  return h;
}
try {
  const saved = Number(localStorage.getItem('ide.terminalHeight'));
  if (saved) setTerminalHeight(saved);
} catch {
  /* storage unavailable */
}
els.splitter.addEventListener('pointerdown', (e) => {
  e.preventDefault();
  els.splitter.setPointerCapture(e.pointerId);
  document.body.classList.add('resizing');
  const move = (ev) => setTerminalHeight(window.innerHeight - ev.clientY);
  const up = (ev) => {
    els.splitter.removeEventListener('pointermove', move);
    els.splitter.removeEventListener('pointerup', up);
    els.splitter.removeEventListener('pointercancel', up);
    document.body.classList.remove('resizing');
    try {
      localStorage.setItem('ide.terminalHeight', String(setTerminalHeight(window.innerHeight - ev.clientY)));
    } catch {
      /* storage unavailable */
    }
  };
  els.splitter.addEventListener('pointermove', move);
  els.splitter.addEventListener('pointerup', up);
  els.splitter.addEventListener('pointercancel', up);
});

// ---------- start ----------

async function start() {
  api
    .info()
    .then((info) => {
      const title = (info.title || '').trim() || 'Exercise';
      els.title.textContent = title;
      els.title.title = info.workdir ? `${title} \u2014 ${info.workdir}` : title;
      document.title = `${title} \u00b7 IDE`;
    })
    .catch((e) => {
      els.title.textContent = 'Exercise';
      console.warn('api/info failed', e);
    });
  refreshFiles().then(() => {
    const last = remembered();
    if (last && !editor.current && tree.paths.has(last)) {
      tree.reveal(last);
      editor.open(last);
      return;
    }
    // A first visit opens on the task: the exercise's README at the top of the workspace.
    const readme = [...tree.paths].find((p) => !p.includes('/') && /^readme(\.md|\.txt)?$/i.test(p));
    if (readme && !editor.current) editor.open(readme);
  });
  try {
    await terminals.init();
  } catch (e) {
    showBanner(`Could not open a terminal: ${e.message}`, 'error');
  }
}

start();
