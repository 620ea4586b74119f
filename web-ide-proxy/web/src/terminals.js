// Terminals: one xterm.js (DOM renderer) per agent terminal, each attached over a WebSocket at
// api/terminals/{id}/socket.
//   server -> client: BINARY frames = output bytes (the scrollback is replayed first on attach),
//                     then TEXT {"type":"replayed"} once the replay is complete
//   client -> server: TEXT frames = {"type":"input","data":...} | {"type":"resize","cols","rows"}
//   close 4000 = the session ended, 4001 = this terminal's shell exited, anything else = reconnect.
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { api, terminalSocketUrl } from './api.js';

const CLOSE_SESSION_ENDED = 4000;
const CLOSE_SHELL_EXITED = 4001;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
// Answers xterm.js gives to terminal queries (cursor position, device attributes, status). When
// they are produced while the scrollback is being replayed they answer questions asked long ago,
// and must not be typed into the shell.
const QUERY_REPLY = /^(\x1b\[\??\d+(;\d+)*R|\x1b\[[?>=]?[\d;]*c|\x1b\[\d*n|\x1b\][^\x07\x1b]*(\x07|\x1b\\))+$/;
// The replay is taken to be the output that arrives without a pause of REPLAY_QUIET_MS (counted
// from when xterm.js has parsed it), within REPLAY_MAX_MS of the socket opening.
const REPLAY_QUIET_MS = 250;
const REPLAY_MAX_MS = 3000;

const THEME = {
  background: '#1b1f27',
  foreground: '#d7dae0',
  cursor: '#f0c674',
  cursorAccent: '#1b1f27',
  selectionBackground: '#3e4757',
  black: '#1b1f27',
  red: '#e06c75',
  green: '#98c379',
  yellow: '#e5c07b',
  blue: '#61afef',
  magenta: '#c678dd',
  cyan: '#56b6c2',
  white: '#d7dae0',
  brightBlack: '#5c6370',
  brightRed: '#ef8891',
  brightGreen: '#b5e08f',
  brightYellow: '#f0d08e',
  brightBlue: '#81c1f7',
  brightMagenta: '#d99be8',
  brightCyan: '#7fd0da',
  brightWhite: '#ffffff',
};

class TerminalTab {
  constructor(id, manager, index) {
    this.id = String(id);
    this.manager = manager;
    this.state = 'connecting'; // connecting | open | reconnecting | exited | ended | gone
    this.attempts = 0;
    this.ws = null;
    this.retryTimer = null;
    this.replayUntil = 0;
    this.replayDeadline = 0;
    this.replayPending = 0;

    this.tab = document.createElement('button');
    this.tab.type = 'button';
    this.tab.className = 'terminal-tab';
    this.tab.dataset.terminal = this.id;
    this.tab.setAttribute('role', 'tab');
    this.label = document.createElement('span');
    this.label.className = 'label';
    this.label.textContent = `Terminal ${index}`;
    this.badge = document.createElement('span');
    this.badge.className = 'badge';
    this.tab.append(this.label, this.badge);
    this.tab.addEventListener('click', () => manager.activate(this.id));

    this.view = document.createElement('div');
    this.view.className = 'terminal-view';
    this.view.dataset.terminalView = this.id;
    this.view.setAttribute('role', 'tabpanel');

    this.term = new Terminal({
      cursorBlink: true,
      fontFamily: getComputedStyle(document.documentElement).getPropertyValue('--mono').trim() || 'monospace',
      fontSize: 13,
      lineHeight: 1.15,
      scrollback: 5000,
      theme: THEME,
    });
    this.fit = new FitAddon();
    this.term.loadAddon(this.fit);
    this.term.onData((data) => this.input(data));
    this.term.onBinary((data) => this.input(data));
    this.term.onResize(({ cols, rows }) => this.send({ type: 'resize', cols, rows }));
  }

  mount(tabsEl, beforeEl, viewsEl) {
    tabsEl.insertBefore(this.tab, beforeEl);
    viewsEl.append(this.view);
    this.term.open(this.view);
    this.fitNow();
    this.connect();
  }

  fitNow() {
    if (!this.view.clientWidth || !this.view.clientHeight) return;
    try {
      this.fit.fit();
    } catch {
      /* not measurable yet */
    }
  }

  setState(state, badge = '') {
    this.state = state;
    this.tab.dataset.state = state;
    this.badge.textContent = badge;
    this.tab.title = badge ? `Terminal ${this.id}: ${badge}` : `Terminal ${this.id}`;
  }

  connect() {
    clearTimeout(this.retryTimer);
    if (['exited', 'ended', 'gone'].includes(this.state)) return;
    const ws = new WebSocket(terminalSocketUrl(this.id));
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let opened = false;
    let gotData = false;
    ws.onopen = () => {
      opened = true;
      this.setState('open');
      // The server replays the scrollback now: start from a clean screen so a reconnect does
      // not show everything twice.
      this.term.reset();
      const now = performance.now();
      this.replayUntil = now + 2 * REPLAY_QUIET_MS;
      this.replayDeadline = now + REPLAY_MAX_MS;
      this.replayPending = 0;
      this.fitNow();
      this.send({ type: 'resize', cols: this.term.cols, rows: this.term.rows });
    };
    ws.onmessage = (ev) => {
      if (!gotData) {
        gotData = true;
        this.attempts = 0;
      }
      if (typeof ev.data === 'string') {
        // Control from the agent: {"type":"replayed"} ends the scrollback replay, once xterm
        // has processed everything written before it.
        try {
          if (JSON.parse(ev.data).type === 'replayed') {
            this.term.write(new Uint8Array(0), () => { this.replayUntil = 0; this.replayDeadline = 0; });
          }
        } catch (_) { /* not control: ignore */ }
        return;
      }
      const data = new Uint8Array(ev.data);
      const now = performance.now();
      if (now < this.replayUntil && now < this.replayDeadline) {
        this.replayPending++;
        this.term.write(data, () => {
          if (--this.replayPending === 0) this.replayUntil = performance.now() + REPLAY_QUIET_MS;
        });
      } else {
        this.term.write(data);
      }
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (ev.code === CLOSE_SESSION_ENDED) {
        this.manager.sessionEnded();
        return;
      }
      if (ev.code === CLOSE_SHELL_EXITED) {
        this.setState('exited', 'exited');
        this.term.write('\r\n\x1b[2m[The shell has exited. Open a new terminal with +]\x1b[0m\r\n');
        this.term.options.disableStdin = true;
        this.term.options.cursorBlink = false;
        this.manager.changed();
        return;
      }
      if (this.manager.ended) return;
      if (opened && !gotData) this.attempts++;
      this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempts);
    this.attempts++;
    this.setState('reconnecting', 'reconnecting\u2026');
    this.retryTimer = setTimeout(async () => {
      // After a few failures, ask whether the terminal still exists (the agent may have restarted).
      if (this.attempts >= 3) {
        try {
          const { terminals } = await api.terminals();
          if (!(terminals || []).some((t) => String(t.id) === this.id)) {
            this.setState('gone', 'gone');
            this.term.write('\r\n\x1b[2m[This terminal no longer exists.]\x1b[0m\r\n');
            this.term.options.disableStdin = true;
            this.manager.changed();
            return;
          }
        } catch {
          /* agent unreachable: keep trying */
        }
      }
      if (!this.manager.ended) this.connect();
    }, delay);
  }

  replaying() {
    const now = performance.now();
    return this.replayPending > 0 || (now < this.replayUntil && now < this.replayDeadline);
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  input(data) {
    if (this.manager.ended || this.term.options.disableStdin) return;
    if (this.replaying() && QUERY_REPLY.test(data)) return;
    this.send({ type: 'input', data });
    if (data.includes('\r')) this.manager.commandEntered();
  }

  dispose() {
    this.end();
    this.term.dispose();
    this.tab.remove();
    this.view.remove();
  }

  end() {
    clearTimeout(this.retryTimer);
    this.term.options.disableStdin = true;
    this.term.options.cursorBlink = false;
    if (!['exited', 'gone'].includes(this.state)) this.setState('ended', 'ended');
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try {
        ws.close();
      } catch {
        /* already closing */
      }
    }
  }
}

export class Terminals {
  constructor({ tabs, views, newButton }, hooks) {
    this.tabsEl = tabs;
    this.viewsEl = views;
    this.newButton = newButton;
    this.hooks = hooks;
    this.tabs = new Map();
    this.activeId = null;
    this.ended = false;
    this.count = 0;
    newButton.addEventListener('click', () => this.create());
    let pending = false;
    new ResizeObserver(() => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        this.fitAll();
      });
    }).observe(views);
  }

  async init() {
    let { terminals } = await api.terminals();
    terminals = terminals || [];
    if (!terminals.length) terminals = [await api.newTerminal()];
    for (const t of terminals) this.add(t.id);
    this.activate(String(terminals[0].id));
  }

  add(id) {
    id = String(id);
    const old = this.tabs.get(id);
    if (old && !['exited', 'gone'].includes(old.state)) return old;
    const tab = new TerminalTab(id, this, ++this.count);
    if (old) {
      // The agent reused the id of a dead terminal (it restarted): replace the dead tab.
      old.dispose();
      this.tabs.delete(id);
    }
    this.tabs.set(id, tab);
    tab.mount(this.tabsEl, this.newButton, this.viewsEl);
    return tab;
  }

  async create() {
    if (this.ended) return;
    this.newButton.disabled = true;
    try {
      const { id } = await api.newTerminal();
      this.add(id);
      this.activate(String(id));
    } catch (e) {
      this.hooks.onError?.(`Could not open a new terminal: ${e.message}`);
    } finally {
      this.newButton.disabled = this.ended;
    }
  }

  activate(id) {
    this.activeId = id;
    for (const [tid, tab] of this.tabs) {
      const on = tid === id;
      tab.tab.classList.toggle('active', on);
      tab.tab.setAttribute('aria-selected', String(on));
      tab.view.classList.toggle('active', on);
    }
    const tab = this.tabs.get(id);
    if (tab) {
      tab.fitNow();
      tab.term.focus();
    }
  }

  fitAll() {
    for (const tab of this.tabs.values()) tab.fitNow();
  }

  // A command was entered in some terminal: files may have changed.
  commandEntered() {
    this.hooks.onCommand?.();
  }

  changed() {
    this.hooks.onChange?.();
  }

  sessionEnded() {
    if (this.ended) return;
    this.ended = true;
    this.newButton.disabled = true;
    for (const tab of this.tabs.values()) tab.end();
    this.hooks.onSessionEnded?.();
  }
}
