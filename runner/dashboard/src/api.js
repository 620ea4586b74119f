// The dashboard's data: JSON under api/ (relative to /dashboard/), authenticated by the HttpOnly
// cookie. Actions also send the per-sign-in CSRF token (from api/me) in X-CSRF-Token; the runner
// refuses them without it or from another origin. Errors are `{"error": {"code", "message"}}`.

let me = null;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function toLogin() {
  location.assign('login');
}

async function errorOf(r) {
  let code = `http_${r.status}`;
  let message = `${r.status} ${r.statusText}`;
  try {
    const body = await r.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch {
    /* not JSON */
  }
  return new ApiError(r.status, code, message);
}

async function call(method, path, { body, signal } = {}) {
  const headers = { accept: 'application/json' };
  if (method !== 'GET') headers['x-csrf-token'] = me ? me.csrf : '';
  if (body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(`api/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
    signal,
  });
  if (r.status === 401) {
    toLogin();
    throw new ApiError(401, 'not_signed_in', 'signed out');
  }
  if (!r.ok) throw await errorOf(r);
  return r;
}

/** Who is signed in, and the CSRF token of this sign-in. */
export async function whoami() {
  const r = await call('GET', 'me');
  me = await r.json();
  return me;
}

export async function get(path, opts) {
  return (await call('GET', path, opts)).json();
}

/** A state-changing request (stop, drain, rollback): JSON in and out. */
export async function act(method, path, body) {
  const r = await call(method, path, { body });
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

/** Follows a streaming text body (build and deploy logs), calling onText with each chunk. */
export async function follow(path, signal, onText) {
  const r = await call('GET', path, { signal });
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onText(decoder.decode(value, { stream: true }));
  }
  onText(decoder.decode());
}

export async function signOut() {
  await fetch('logout', {
    method: 'POST',
    headers: { 'x-csrf-token': me ? me.csrf : '' },
    credentials: 'same-origin',
  }).catch(() => {});
  toLogin();
}
