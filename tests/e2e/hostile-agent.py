#!/usr/bin/env python3
"""A learner's stand-in for the IDE agent, for the attack tests (tests/ide.rs).

Inside a sandbox the agent, supervisord and the learner are one uid, so a learner can stop the
agent and listen on its socket. This one answers like an attacker would:
  - /api/slow...   streams a body forever (to pile up connections past the proxy's bound);
  - anything else  an HTML page with a script, and Set-Cookie headers: the runner's cookie name
                   for the whole origin, a Domain cookie, and 20 fresh 4 KB cookies per answer
                   (a cookie bomb, which would make the browser's requests too large: 431).

    python3 hostile-agent.py /run/ide-agent/agent.sock

It listens on the agent's abstract socket too (`@exercise-runner/ide-agent`, in the sandbox's
network namespace), where the proxy looks first under runc.
"""
import os
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

SOCKET = sys.argv[1]
PAGE = (b"<!doctype html><title>owned</title>"
        b"<script>fetch('/pwned?by=agent-script');document.title='pwned'</script><p>owned</p>")
counter = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self):
        return "sandbox"

    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/api/slow"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"2\r\n.\n\r\n")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Set-Cookie", "exercise_runner_ide=attacker; Path=/")
        self.send_header("Set-Cookie", "tracking=planted; Domain=127.0.0.1; Path=/")
        self.send_header("Set-Cookie", "tracking2=planted; Domain=localhost; Path=/")
        for _ in range(20):
            counter[0] += 1
            self.send_header("Set-Cookie", "bomb%d=%s; Path=/" % (counter[0], "x" * 4000))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    do_GET = do_POST = do_PUT = do_DELETE = answer


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


os.makedirs(os.path.dirname(SOCKET), exist_ok=True)
if os.path.exists(SOCKET):
    os.unlink(SOCKET)
server = Server(SOCKET, Handler)
try:
    netns = Server("\0exercise-runner/ide-agent", Handler)
    threading.Thread(target=netns.serve_forever, daemon=True).start()
except OSError as e:
    print(f"no abstract socket: {e}", file=sys.stderr)
open("/tmp/hostile-agent.ready", "w").close()
server.serve_forever()
