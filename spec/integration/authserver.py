"""A small real HTTP/1.1 auth server for the forward_auth tests (stdlib only).

It runs in the test process on a free 127.0.0.1 port, one thread per
connection, keep-alive, and records every request it gets (method, target,
headers in received order, body). Its answer is driven by its own path and
query, so each gateway route can point at a different behaviour:

  /hang...        never answers until stop() (for timeouts)
  anything else   status from ?status=NNN (default 200), a response header
                  per ?h=Name:Value (repeatable, kept in order), body from
                  ?body=TEXT (default empty), Content-Type from ?ctype=...

    auth = AuthServer(); auth.start() ... auth.requests ... auth.stop()
"""

import http.server
import threading
from urllib.parse import parse_qsl, urlsplit


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        body = self._read_body()
        srv = self.server.owner
        with srv.lock:
            srv.requests.append({
                "method": self.command,
                "target": self.path,
                "headers": list(self.headers.items()),
                "body": body,
            })
        url = urlsplit(self.path)
        if url.path.startswith("/hang"):
            srv.stopping.wait(60)
            self.close_connection = True
            return
        q = parse_qsl(url.query, keep_blank_values=True)
        status = int(dict(q).get("status", "200"))
        payload = dict(q).get("body", "").encode()
        self.send_response(status)
        for k, v in q:
            if k == "h":
                name, _, value = v.partition(":")
                self.send_header(name, value)
        if "ctype" in dict(q):
            self.send_header("Content-Type", dict(q)["ctype"])
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


class AuthServer:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.stopping = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def url(self, path="/auth"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def count(self):
        with self.lock:
            return len(self.requests)

    def last(self):
        with self.lock:
            return self.requests[-1]

    def stop(self):
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
