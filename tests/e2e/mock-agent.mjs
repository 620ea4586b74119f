#!/usr/bin/env node
// A stand-in for the IDE agent + proxy, for developing and testing the browser front-end
// (web-ide-proxy/web) without the Rust side. No dependencies beyond Node.js 20 (the WebSocket server
// is a minimal RFC 6455 implementation below) and util-linux `script` (gives shells a real PTY).
//
//   node tests/e2e/mock-agent.mjs            # prints IDE_URL=http://127.0.0.1:PORT/ide/test-session/?token=...
//
// Environment (all optional):
//   PORT            port on 127.0.0.1 (default 0 = any free port)
//   DIST            the built page (default: web-ide-proxy/web/dist next to this repository's tests/)
//   SESSION         session id in the path (default test-session)
//   TOKEN           the token the page URL carries (default mock-token); like web-ide-proxy, a
//                   request with ?token= gets a cookie scoped to /ide/{session}/ and a 303 to the
//                   same URL without the token; every other request needs the cookie
//   MOCK_CONTAINER  a running container (e.g. exercise-runner/busybox): files are read and written
//                   in its /workspace with `docker exec`, terminals are `docker exec -it ... sh`
//   MOCK_WORKDIR    without MOCK_CONTAINER: a local directory for the files (default: a fresh temp
//                   dir with sample files); terminals are local bash
//   MOCK_TITLE      exercise title (default "FizzBuzz (mock)")
//   MOCK_VERDICT    passed | failed (default failed): what POST _runner/check answers
//   MOCK_LOG        1 = log every request to stderr
// Test hooks: POST /__mock/end closes every terminal socket with 4000 (session ended).
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.resolve(process.env.DIST || path.join(here, '../../web-ide-proxy/web/dist'));
const SESSION = process.env.SESSION || 'test-session';
const TOKEN = process.env.TOKEN || 'mock-token';
const PREFIX = `/ide/${SESSION}/`;
const CONTAINER = process.env.MOCK_CONTAINER || '';
const TITLE = process.env.MOCK_TITLE ?? 'FizzBuzz (mock)';
const VERDICT_PASSED = (process.env.MOCK_VERDICT || 'failed').toLowerCase() === 'passed';
const LOG = process.env.MOCK_LOG === '1';
const COOKIE = 'ide_token';
const MAX_FILE = 1024 * 1024;
const SCROLLBACK = 64 * 1024;
const WORKDIR_IN_CONTAINER = '/workspace';

if (CONTAINER && !/^[\w.-]+$/.test(CONTAINER)) throw new Error('MOCK_CONTAINER: not a container id/name');
if (!fs.existsSync(path.join(DIST, 'index.html'))) {
  console.error(`mock-agent: ${DIST}/index.html not found; build the page first (cd web-ide-proxy/web && npm ci && node build.mjs)`);
  process.exit(2);
}

const log = (...a) => LOG && console.error('[mock]', ...a);

// ---------------------------------------------------------------- files

const SAMPLE = {
  'fizzbuzz.py':
    'def fizzbuzz(n):\n    """Return "Fizz", "Buzz", "FizzBuzz" or the number as a string."""\n    return str(n)\n\n\nif __name__ == "__main__":\n    for i in range(1, 16):\n        print(fizzbuzz(i))\n',
  'Makefile': 'test:\n\tpython3 -m pytest -q tests\n',
  'README.md': '# FizzBuzz\n\nMake `make test` pass.\n',
  'tests/test_fizzbuzz.py': 'from fizzbuzz import fizzbuzz\n\n\ndef test_fizz():\n    assert fizzbuzz(3) == "Fizz"\n',
  'scripts/run.sh': '#!/bin/sh\nset -eu\npython3 fizzbuzz.py\n',
};

let WORKDIR = process.env.MOCK_WORKDIR;
if (!CONTAINER && !WORKDIR) {
  WORKDIR = fs.mkdtempSync(path.join(os.tmpdir(), 'ide-mock-'));
  for (const [p, text] of Object.entries(SAMPLE)) {
    fs.mkdirSync(path.dirname(path.join(WORKDIR, p)), { recursive: true });
    fs.writeFileSync(path.join(WORKDIR, p), text);
  }
}

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Relative, normalised, inside the workdir.
function cleanPath(p) {
  if (typeof p !== 'string' || !p || p.includes('\0')) throw new HttpError(400, 'bad_path', 'path is required');
  const norm = path.posix.normalize(p);
  if (norm.startsWith('/') || norm === '..' || norm.startsWith('../') || norm === '.')
    throw new HttpError(400, 'bad_path', 'path must be relative to the workdir');
  return norm;
}

function run(cmd, args, input) {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { encoding: 'buffer', maxBuffer: 8 * MAX_FILE }, (err, stdout, stderr) => {
      if (err) {
        err.stderr = stderr.toString();
        reject(err);
      } else resolve(stdout);
    });
    if (input !== undefined) child.stdin.end(input);
  });
}

const LIST_SCRIPT =
  'cd "$1" && find . -mindepth 1 | sort | while IFS= read -r p; do if [ -d "$p" ]; then echo "d 0 ${p#./}"; else echo "f $(wc -c < "$p") ${p#./}"; fi; done';

const files = {
  async list() {
    if (CONTAINER) {
      const out = (await run('docker', ['exec', CONTAINER, 'sh', '-c', LIST_SCRIPT, 'sh', WORKDIR_IN_CONTAINER])).toString();
      return out
        .split('\n')
        .filter(Boolean)
        .map((line) => {
          const [, kind, size, p] = line.match(/^(\w) +(\d+) (.*)$/);
          return kind === 'd' ? { path: p, kind: 'dir' } : { path: p, kind: 'file', size: Number(size) };
        });
    }
    const entries = [];
    const walk = (rel) => {
      for (const d of fs.readdirSync(path.join(WORKDIR, rel), { withFileTypes: true })) {
        const p = rel ? `${rel}/${d.name}` : d.name;
        if (d.isDirectory()) {
          entries.push({ path: p, kind: 'dir' });
          walk(p);
        } else entries.push({ path: p, kind: 'file', size: fs.statSync(path.join(WORKDIR, p)).size });
      }
    };
    walk('');
    return entries.sort((a, b) => (a.path < b.path ? -1 : 1));
  },
  async read(p) {
    let buf;
    try {
      buf = CONTAINER
        ? await run('docker', ['exec', CONTAINER, 'cat', '--', `${WORKDIR_IN_CONTAINER}/${p}`])
        : fs.readFileSync(path.join(WORKDIR, p));
    } catch {
      throw new HttpError(404, 'not_found', `no such file: ${p}`);
    }
    if (buf.length > MAX_FILE) throw new HttpError(413, 'too_large', `file is larger than ${MAX_FILE} bytes`);
    return buf; // raw bytes, like the agent (the page detects text that is not UTF-8)
  },
  async write(p, body) {
    if (CONTAINER) {
      await run('docker', ['exec', '-i', CONTAINER, 'sh', '-c', 'cat > "$1"', 'sh', `${WORKDIR_IN_CONTAINER}/${p}`], body);
    } else {
      fs.mkdirSync(path.dirname(path.join(WORKDIR, p)), { recursive: true });
      fs.writeFileSync(path.join(WORKDIR, p), body);
    }
  },
};

// ---------------------------------------------------------------- terminals (PTY via `script`)

const terminals = new Map(); // id -> {id, proc, scrollback: Buffer[], size, clients: Set<Ws>}
let nextTerminal = 1;
let sessionEnded = false;

function createTerminal() {
  const id = String(nextTerminal++);
  const shell = CONTAINER
    ? `docker exec -it -e TERM=xterm-256color -w ${WORKDIR_IN_CONTAINER} ${CONTAINER} sh`
    : 'bash --norc --noprofile -i';
  const proc = spawn('script', ['-qfec', shell, '/dev/null'], {
    cwd: CONTAINER ? os.tmpdir() : WORKDIR,
    env: { ...process.env, TERM: 'xterm-256color', PS1: '\\W $ ', HISTFILE: '/dev/null' },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true, // its own process group, so shutdown() can end the shell and what it runs
  });
  const t = { id, proc, scrollback: [], size: 0, clients: new Set() };
  const output = (chunk) => {
    t.scrollback.push(chunk);
    t.size += chunk.length;
    while (t.size > SCROLLBACK && t.scrollback.length > 1) t.size -= t.scrollback.shift().length;
    for (const ws of t.clients) ws.send(chunk, 0x2);
  };
  proc.stdout.on('data', output);
  proc.stderr.on('data', output);
  proc.on('exit', (code) => {
    log(`terminal ${id} exited (${code})`);
    terminals.delete(id);
    for (const ws of t.clients) ws.close(4001, 'shell exited');
  });
  proc.stdin.on('error', () => {});
  terminals.set(id, t);
  log(`terminal ${id} created`);
  return t;
}

// ---------------------------------------------------------------- check

let checkRunning = false;
async function check() {
  if (checkRunning) throw new HttpError(409, 'check_running', 'a check is already running');
  checkRunning = true;
  const started = Date.now();
  try {
    await new Promise((r) => setTimeout(r, 400));
    const output = VERDICT_PASSED
      ? 'python3 -m pytest -q tests\n\x1b[32m.\x1b[0m\n1 passed in 0.01s\n'
      : 'python3 -m pytest -q tests\n\x1b[31mF\x1b[0m\n=================================== FAILURES ===================================\n___________________________________ test_fizz __________________________________\n\n    def test_fizz():\n>       assert fizzbuzz(3) == "Fizz"\nE       AssertionError: assert \'3\' == \'Fizz\'\n\ntests/test_fizzbuzz.py:5: AssertionError\n1 failed in 0.03s\nmake: *** [Makefile:2: test] Error 1\n';
    return { passed: VERDICT_PASSED, exit_code: VERDICT_PASSED ? 0 : 2, output, truncated: false, timed_out: false, duration_ms: Date.now() - started };
  } finally {
    checkRunning = false;
  }
}

// ---------------------------------------------------------------- HTTP

function cookies(req) {
  const out = {};
  for (const part of (req.headers.cookie || '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i).trim()] = decodeURIComponent(part.slice(i + 1).trim());
  }
  return out;
}

function authorised(req) {
  return cookies(req)[COOKIE] === TOKEN;
}

function sendJson(res, status, body, headers = {}) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': data.length, 'Cache-Control': 'no-store', ...headers });
  res.end(data);
}

function sendError(res, status, code, message) {
  sendJson(res, status, { error: { code, message } });
}

function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) {
        reject(new HttpError(413, 'too_large', `body is larger than ${limit} bytes`));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

const STATIC = { '': ['index.html', 'text/html; charset=utf-8'], 'app.js': ['app.js', 'text/javascript; charset=utf-8'], 'app.css': ['app.css', 'text/css; charset=utf-8'] };

async function handle(req, res) {
  const url = new URL(req.url, 'http://mock');
  log(req.method, url.pathname + url.search);

  if (url.pathname === PREFIX.slice(0, -1)) {
    res.writeHead(308, { Location: PREFIX + url.search });
    return res.end();
  }
  if (req.method === 'POST' && url.pathname === '/__mock/end') {
    sessionEnded = true;
    for (const t of terminals.values()) for (const ws of t.clients) ws.close(4000, 'session ended');
    return sendJson(res, 200, { ended: true });
  }
  if (!url.pathname.startsWith(PREFIX)) {
    console.error(`[mock] WARNING: request outside ${PREFIX}: ${req.method} ${url.pathname} (the page must use relative URLs)`);
    return sendError(res, 404, 'not_found', 'not found');
  }
  const rest = url.pathname.slice(PREFIX.length);
  if (url.searchParams.has('token')) {
    // Like web-ide-proxy: exchange the URL token for a path-scoped cookie, redirect without it.
    if (url.searchParams.get('token') !== TOKEN) return sendError(res, 401, 'invalid_token', 'bad token');
    res.writeHead(303, {
      Location: PREFIX + rest,
      'Set-Cookie': `${COOKIE}=${TOKEN}; Path=${PREFIX}; HttpOnly; SameSite=Lax`,
      'Cache-Control': 'no-store',
    });
    return res.end();
  }
  if (!authorised(req)) return sendError(res, 401, 'not_authenticated', 'missing or bad cookie');

  if (req.method === 'GET' && rest in STATIC) {
    const [file, type] = STATIC[rest];
    const data = fs.readFileSync(path.join(DIST, file));
    res.writeHead(200, { 'Content-Type': type, 'Content-Length': data.length, 'Cache-Control': 'no-cache' });
    return res.end(data);
  }
  if (sessionEnded) return sendError(res, 410, 'session_ended', 'the session has ended');

  const route = `${req.method} ${rest}`;
  switch (route) {
    case 'GET api/info':
      return sendJson(res, 200, { workdir: WORKDIR_IN_CONTAINER, title: TITLE });
    case 'GET api/files':
      return sendJson(res, 200, { entries: await files.list() });
    case 'GET api/file': {
      const text = await files.read(cleanPath(url.searchParams.get('path')));
      res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store' });
      return res.end(text);
    }
    case 'PUT api/file': {
      const p = cleanPath(url.searchParams.get('path'));
      const body = await readBody(req, MAX_FILE);
      await files.write(p, body);
      res.writeHead(204);
      return res.end();
    }
    case 'GET api/terminals':
      return sendJson(res, 200, { terminals: [...terminals.keys()].map((id) => ({ id })) });
    case 'POST api/terminals':
      return sendJson(res, 200, { id: createTerminal().id });
    case 'POST _runner/check':
      return sendJson(res, 201, await check());
    default:
      return sendError(res, 404, 'not_found', `no route ${route}`);
  }
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((e) => {
    if (e instanceof HttpError) return sendError(res, e.status, e.code, e.message);
    console.error('[mock] error', e);
    sendError(res, 500, 'internal', String(e.message || e));
  });
});

// ---------------------------------------------------------------- WebSocket (minimal RFC 6455)

class Ws {
  constructor(socket, head) {
    this.socket = socket;
    this.buf = head && head.length ? Buffer.from(head) : Buffer.alloc(0);
    this.fragments = [];
    this.fragOpcode = 0;
    this.closed = false;
    this.onText = () => {};
    this.onClose = () => {};
    socket.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.parse();
    });
    socket.on('close', () => this.finish());
    socket.on('error', () => this.finish());
    if (this.buf.length) setImmediate(() => this.parse());
  }

  finish() {
    if (this.closed) return;
    this.closed = true;
    this.onClose();
  }

  parse() {
    for (;;) {
      const b = this.buf;
      if (b.length < 2) return;
      const fin = (b[0] & 0x80) !== 0;
      const opcode = b[0] & 0x0f;
      const masked = (b[1] & 0x80) !== 0;
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      const maskLen = masked ? 4 : 0;
      if (b.length < off + maskLen + len) return;
      const mask = masked ? b.subarray(off, off + 4) : null;
      const payload = Buffer.from(b.subarray(off + maskLen, off + maskLen + len));
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
      this.buf = b.subarray(off + maskLen + len);
      this.frame(fin, opcode, payload);
    }
  }

  frame(fin, opcode, payload) {
    if (opcode === 0x8) {
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1000;
      this.close(code === 1005 ? 1000 : code);
      return;
    }
    if (opcode === 0x9) return this.send(payload, 0xa);
    if (opcode === 0xa) return;
    if (opcode === 0x1 || opcode === 0x2) {
      this.fragOpcode = opcode;
      this.fragments = [payload];
    } else if (opcode === 0x0) this.fragments.push(payload);
    if (!fin) return;
    const data = Buffer.concat(this.fragments);
    this.fragments = [];
    if (this.fragOpcode === 0x1) this.onText(data.toString('utf8'));
  }

  send(payload, opcode = 0x2) {
    if (this.closed || this.socket.destroyed) return;
    const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
    let header;
    if (data.length < 126) {
      header = Buffer.from([0x80 | opcode, data.length]);
    } else if (data.length < 65536) {
      header = Buffer.alloc(4);
      header[0] = 0x80 | opcode;
      header[1] = 126;
      header.writeUInt16BE(data.length, 2);
    } else {
      header = Buffer.alloc(10);
      header[0] = 0x80 | opcode;
      header[1] = 127;
      header.writeBigUInt64BE(BigInt(data.length), 2);
    }
    this.socket.write(Buffer.concat([header, data]));
  }

  close(code = 1000, reason = '') {
    if (this.closed) return;
    const r = Buffer.from(reason);
    const p = Buffer.alloc(2 + r.length);
    p.writeUInt16BE(code, 0);
    r.copy(p, 2);
    this.send(p, 0x8);
    this.finish();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }
}

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://mock');
  const reject = (status, text) => {
    log('ws reject', status, url.pathname);
    socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  };
  if (!url.pathname.startsWith(PREFIX)) {
    console.error(`[mock] WARNING: websocket outside ${PREFIX}: ${url.pathname}`);
    return reject(404, 'Not Found');
  }
  if (!authorised(req)) return reject(401, 'Unauthorized');
  const m = url.pathname.slice(PREFIX.length).match(/^api\/terminals\/([^/]+)\/socket$/);
  const key = req.headers['sec-websocket-key'];
  if (!m || !key) return reject(404, 'Not Found');
  if (!sessionEnded && !terminals.has(decodeURIComponent(m[1]))) return reject(404, 'Not Found');
  const accept = crypto.createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  socket.setNoDelay(true);
  const ws = new Ws(socket, head);
  if (sessionEnded) return ws.close(4000, 'session ended');
  const t = terminals.get(decodeURIComponent(m[1]));
  if (!t) return ws.close(4001, 'shell exited');
  log(`ws attach terminal ${t.id}`);
  if (t.scrollback.length) ws.send(Buffer.concat(t.scrollback), 0x2);
  t.clients.add(ws);
  ws.onClose = () => t.clients.delete(ws);
  ws.onText = (text) => {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return ws.close(1003, 'bad message');
    }
    if (msg.type === 'input' && typeof msg.data === 'string') {
      log(`terminal ${t.id} input ${JSON.stringify(msg.data)}`);
      t.proc.stdin.write(msg.data);
    }
    else if (msg.type === 'resize') {
      t.cols = msg.cols;
      t.rows = msg.rows;
      log(`terminal ${t.id} resize ${msg.cols}x${msg.rows}`);
    } else log('ws: unknown message', text);
  };
});

// ---------------------------------------------------------------- start

server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  const { port } = server.address();
  console.log(`IDE_URL=http://127.0.0.1:${port}${PREFIX}?token=${encodeURIComponent(TOKEN)}`);
  console.error(`[mock] serving ${DIST}; files in ${CONTAINER ? `container ${CONTAINER}:${WORKDIR_IN_CONTAINER}` : WORKDIR}`);
});

function shutdown() {
  for (const t of terminals.values()) {
    try {
      process.kill(-t.proc.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
  server.close();
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
