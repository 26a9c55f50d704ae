"""An HTTP/2 test upstream on python3-h2, run in a thread of the test process
(so tests read its counters directly): h2c with prior knowledge, or TLS with
ALPN h2 when given an ssl context.

Paths:
  /echo...       200 JSON: method, path, authority, scheme, headers, body
                 length and sha256, the request's trailers, the connection's
                 number; with Content-Length
  /trailers      200, body "hello" in two DATA frames, then trailers
                 x-checksum: abc and grpc-status: 0 (no Content-Length)
  /slow?ms=N     answers after N ms (default 300)
  /big?n=N       N pattern bytes, sent as the flow-control window allows
  /reset         RST_STREAM (INTERNAL_ERROR) before any response
  /die           the head and part of the body, then the connection closes
  /goaway        GOAWAY (last stream = this one), then answers it
  /refuse-first  on the first connection: GOAWAY leaving this stream out (it
                 was not processed); on any other: as /echo
  /close-after   as /echo, then the server ends the connection (FIN, no GOAWAY)
  /status?code=N answers N with a short body

Counters: connections (accepted), closed (connections that ended), peak (most
streams open at once on one connection), resets (streams the gateway reset),
requests (list of dicts).
"""

import asyncio
import hashlib
import json
import threading
import time
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.errors
import h2.settings
from hyperframe.frame import GoAwayFrame


def pattern(n):
    base = bytes(range(256))
    return (base * (n // 256 + 1))[:n]


class _Stream:
    def __init__(self, headers):
        self.headers = headers
        self.body = bytearray()
        self.trailers = []


class _Proto(asyncio.Protocol):
    def __init__(self, srv):
        self.srv = srv
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_inbound_headers=True)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.streams = {}
        self.window_waiters = []
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport
        with self.srv.lock:
            self.srv.connections += 1
            self.num = self.srv.connections
            self.srv.protos.add(self)
        settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20}
        if self.srv.max_streams is not None:
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = self.srv.max_streams
        self.conn.initiate_connection()
        self.conn.update_settings(settings)
        self.conn.increment_flow_control_window(1 << 24)
        self.flush()

    def connection_lost(self, exc):
        self.closed = True
        with self.srv.lock:
            self.srv.closed += 1
            self.srv.protos.discard(self)
        for w in self.window_waiters:
            if not w.done():
                w.set_result(None)

    def flush(self):
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def data_received(self, data):
        try:
            events = self.conn.receive_data(data)
        except Exception:
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.streams[ev.stream_id] = _Stream(ev.headers)
                with self.srv.lock:
                    open_now = len([s for s in self.streams.values()])
                    self.srv.peak = max(self.srv.peak, open_now)
            elif isinstance(ev, h2.events.DataReceived):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.body += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.trailers = ev.headers
            elif isinstance(ev, h2.events.StreamEnded):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    asyncio.ensure_future(self.handle(ev.stream_id, st))
            elif isinstance(ev, h2.events.StreamReset):
                self.streams.pop(ev.stream_id, None)
                with self.srv.lock:
                    self.srv.resets += 1
            elif isinstance(ev, h2.events.WindowUpdated):
                ws, self.window_waiters = self.window_waiters, []
                for w in ws:
                    if not w.done():
                        w.set_result(None)
        self.flush()

    async def send_body(self, sid, data, end=True):
        while data:
            if self.closed or sid not in self.streams:
                return False
            win = self.conn.local_flow_control_window(sid)
            n = min(win, self.conn.max_outbound_frame_size, len(data))
            if n <= 0:
                fut = asyncio.get_event_loop().create_future()
                self.window_waiters.append(fut)
                await fut
                continue
            self.conn.send_data(sid, data[:n])
            data = data[n:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()
        return True

    async def handle(self, sid, st):
        h = dict(st.headers)
        path = h.get(":path", "")
        u = urlsplit(path)
        q = parse_qs(u.query)
        rec = {"method": h.get(":method"), "path": path, "authority": h.get(":authority"),
               "scheme": h.get(":scheme"), "headers": [list(x) for x in st.headers],
               "body_len": len(st.body), "body_sha256": hashlib.sha256(st.body).hexdigest(),
               "trailers": [list(x) for x in st.trailers], "conn": self.num}
        with self.srv.lock:
            self.srv.requests.append(rec)
        try:
            await self.route(sid, u.path, q, rec)
        except Exception:  # a stream reset under us, a closed connection
            pass
        self.streams.pop(sid, None)

    async def route(self, sid, p, q, rec):
        c = self.conn
        if p == "/slow":
            await asyncio.sleep(int(q.get("ms", ["300"])[0]) / 1000.0)
            p = "/echo"
        if p.startswith("/echo"):
            body = json.dumps(rec).encode()
            c.send_headers(sid, [(":status", "200"), ("content-type", "application/json"),
                                 ("content-length", str(len(body))), ("x-upstream", "h2")])
            self.flush()
            await self.send_body(sid, body)
        elif p == "/trailers":
            c.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
            c.send_data(sid, b"hel")
            self.flush()
            await asyncio.sleep(0.02)
            c.send_data(sid, b"lo")
            c.send_headers(sid, [("x-checksum", "abc"), ("grpc-status", "0")], end_stream=True)
            self.flush()
        elif p == "/big":
            n = int(q.get("n", ["1048576"])[0])
            c.send_headers(sid, [(":status", "200"), ("content-length", str(n))])
            self.flush()
            await self.send_body(sid, pattern(n))
        elif p == "/reset":
            c.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
        elif p == "/die":
            c.send_headers(sid, [(":status", "200"), ("content-length", "100000")])
            c.send_data(sid, b"x" * 1000)
            self.flush()
            await asyncio.sleep(0.05)
            self.transport.close()
        elif p == "/goaway":
            # a raw GOAWAY (h2's own would refuse to send anything after it)
            self.flush()
            self.transport.write(GoAwayFrame(0, last_stream_id=sid).serialize())
            await asyncio.sleep(0.05)
            body = b"bye"
            c.send_headers(sid, [(":status", "200"), ("content-length", "3")])
            c.send_data(sid, body, end_stream=True)
            self.flush()
        elif p == "/refuse-first" and self.num == 1:
            # GOAWAY that leaves this stream out: not processed, so it may go
            # again; this connection answers nothing more
            self.flush()
            self.transport.write(GoAwayFrame(0, last_stream_id=max(0, sid - 2)).serialize())
        elif p == "/refuse-first":
            await self.route(sid, "/echo", q, rec)
        elif p == "/close-after":
            # answers, then ends the connection without a GOAWAY (FIN; what
            # comes after is still read, so no RST loses the answer)
            await self.route(sid, "/echo", q, rec)
            self.transport.write_eof()
        elif p == "/status":
            code = q.get("code", ["200"])[0]
            body = ("status %s" % code).encode()
            c.send_headers(sid, [(":status", code), ("content-length", str(len(body)))])
            c.send_data(sid, body, end_stream=True)
            self.flush()
        else:
            c.send_headers(sid, [(":status", "404"), ("content-length", "0")], end_stream=True)
            self.flush()


class H2Upstream:
    def __init__(self, port, ssl_ctx=None, max_streams=None):
        self.port = port
        self.ssl_ctx = ssl_ctx
        self.max_streams = max_streams
        self.lock = threading.Lock()
        self.connections = 0
        self.peak = 0
        self.resets = 0
        self.closed = 0
        self.protos = set()
        self.stopped = False
        self.requests = []
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("h2 upstream did not start")

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = await self.loop.create_server(lambda: _Proto(self), "127.0.0.1",
                                                        self.port, ssl=self.ssl_ctx,
                                                        reuse_address=True)
        self.loop.run_until_complete(start())
        self._ready.set()
        self.loop.run_forever()
        # handlers still waiting (a slow answer nobody waits for) end here
        tasks = asyncio.all_tasks(self.loop)
        for t in tasks:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    def stop(self):
        """Stops listening and drops every connection (as a dying server
        would); idempotent."""
        if self.stopped:
            return
        self.stopped = True

        def halt():
            self.server.close()
            for p in list(self.protos):
                p.transport.abort()
            self.loop.call_soon(self.loop.stop)  # after the aborts took effect
        self.loop.call_soon_threadsafe(halt)
        self._thread.join(5)
        time.sleep(0)
