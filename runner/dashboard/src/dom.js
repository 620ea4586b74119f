// DOM building without innerHTML: every value from the runner is text, never markup (learner ids,
// exercise titles and log lines are not ours). Styles are set through the CSSOM, which the page's
// Content-Security-Policy (style-src 'self') allows.

/** h('div.card#id', {attrs, on: {click}}, ...children) */
export function h(tag, props, ...children) {
  if (props === null || typeof props !== 'object' || props instanceof Node || Array.isArray(props)) {
    children.unshift(props);
    props = {};
  }
  const [, name, rest] = /^([a-z0-9]+)(.*)$/i.exec(tag);
  const el = document.createElement(name);
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === '.') el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === 'style') Object.assign(el.style, v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const MIB = 1024 * 1024;

export function bytes(n) {
  if (n === null || n === undefined) return '—';
  if (n >= 1024 * MIB) return `${(n / (1024 * MIB)).toFixed(n >= 10 * 1024 * MIB ? 0 : 1)} GiB`;
  if (n >= MIB) return `${(n / MIB).toFixed(n >= 100 * MIB ? 0 : 1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${n} B`;
}

export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, '0')}s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h ${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

export function since(iso) {
  return iso ? duration(Date.now() - Date.parse(iso)) : '—';
}

export function ago(iso) {
  return iso ? `${since(iso)} ago` : '—';
}

export function clock(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function cores(n) {
  return `${n} core${n === 1 ? '' : 's'}`;
}

export function percent(x) {
  return x === null || x === undefined ? '—' : `${(x * 100).toFixed(x < 0.1 ? 1 : 0)} %`;
}

/** A bar of `used` against `limit`: green, amber past 70 %, red past 90 %. */
export function bar(used, limit, label, { title } = {}) {
  const ratio = limit ? Math.min(1, Math.max(0, used / limit)) : 0;
  const level = ratio >= 0.9 ? 'high' : ratio >= 0.7 ? 'mid' : 'low';
  return h(
    'div.bar',
    { title: title || label, role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': limit || 0, 'aria-valuenow': used || 0, 'aria-label': label },
    h(`div.fill.${level}`, { style: { width: `${(ratio * 100).toFixed(1)}%` } }),
    h('span.bar-label', label),
  );
}

export function stateChip(state) {
  return h(`span.chip.state-${state}`, state);
}

export function empty(text) {
  return h('p.empty.muted', text);
}

export function errorBox(e) {
  return h('p.error', { role: 'alert' }, e instanceof Error ? e.message : String(e));
}

let toastTimer;
export function toast(text, kind = 'info') {
  const el = document.getElementById('toast');
  el.textContent = text;
  el.className = kind;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 6000);
}
