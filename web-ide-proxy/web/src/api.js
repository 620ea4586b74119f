// The agent's HTTP API. Every URL here is RELATIVE to the page: the page lives at
// /ide/{session_id}/ behind the runner's proxy, so `api/files` resolves to
// /ide/{session_id}/api/files. Never add a leading slash.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Turns a non-2xx response into an ApiError, reading the agent's
// {"error": {"code", "message"}} body when there is one.
async function failure(res) {
  let code = `http_${res.status}`;
  let message = `${res.status} ${res.statusText}`.trim();
  try {
    const text = await res.text();
    try {
      const body = JSON.parse(text);
      if (body && body.error) {
        code = body.error.code || code;
        message = body.error.message || message;
      }
    } catch {
      if (text && text.length < 300) message = text.trim() || message;
    }
  } catch {
    /* body unreadable: keep the status line */
  }
  return new ApiError(res.status, code, message);
}

async function request(url, init = {}) {
  let res;
  try {
    res = await fetch(url, { credentials: 'same-origin', cache: 'no-store', ...init });
  } catch (e) {
    throw new ApiError(0, 'network', 'The IDE could not reach the sandbox (network error).');
  }
  if (!res.ok) throw await failure(res);
  return res;
}

async function json(url, init) {
  const res = await request(url, init);
  return res.json();
}

const q = (path) => encodeURIComponent(path);

export const api = {
  info: () => json('api/info'),
  files: () => json('api/files'),
  // -> {text, binary}: binary when the bytes are not UTF-8 text (or contain NUL); such a file is
  // shown read-only, since saving the decoded text back would corrupt it.
  readFile: async (path) => {
    const bytes = await (await request(`api/file?path=${q(path)}`)).arrayBuffer();
    try {
      const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
      return { text, binary: text.includes('\0') };
    } catch {
      return { text: new TextDecoder('utf-8').decode(bytes), binary: true };
    }
  },
  writeFile: (path, text) =>
    request(`api/file?path=${q(path)}`, {
      method: 'PUT',
      headers: { 'Content-Type': 'text/plain; charset=utf-8' },
      body: text,
    }),
  terminals: () => json('api/terminals'),
  newTerminal: () => json('api/terminals', { method: 'POST' }),
  check: () => json('_runner/check', { method: 'POST' }),
  startOver: () => json('_runner/reset', { method: 'POST' }),
};

// ws: or wss: to match the page, same host, path = the page's directory + api/terminals/{id}/socket.
export function terminalSocketUrl(id) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const dir = location.pathname.replace(/[^/]*$/, '');
  return `${scheme}//${location.host}${dir}api/terminals/${encodeURIComponent(id)}/socket`;
}
