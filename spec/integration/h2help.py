"""A raw HTTP/2 client for the HTTP/2 tests: python3-h2 over a plain socket
(h2c with prior knowledge) or TLS with ALPN h2. Streams can be opened and
read one by one or many at once; frames can also be written by hand
(floods), and GOAWAY / RST_STREAM are recorded as they arrive."""

import socket
import ssl
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


class Stream:
    def __init__(self, sid):
        self.id = sid
        self.status = None
        self.headers = []
        self.data = bytearray()
        self.trailers = None
        self.ended = False
        self.reset = None           # error code of a RST_STREAM from the server
        self.head_ended = False     # the response HEADERS carried END_STREAM
        self.frames = []            # event class names in order

    def header(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def done(self):
        return self.ended or self.reset is not None


class H2Conn:
    def __init__(self, port, host="127.0.0.1", tls=False, timeout=10.0, settings=None):
        raw = socket.create_connection((host, port), timeout=timeout)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            raw = ctx.wrap_socket(raw, server_hostname="localhost")
            self.alpn = raw.selected_alpn_protocol()
        self.sock = raw
        self.sock.settimeout(timeout)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=cfg)
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.streams = {}
        self.goaway = None          # (error_code, last_stream_id)
        self.closed = False
        self.settings = {}
        self.no_ack = set()         # streams whose DATA we do not acknowledge (stalled readers)
        self.flush()

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data):
        self.sock.sendall(data)

    def request(self, method="GET", path="/", headers=(), body=None, end=True,
                authority="localhost", scheme="http"):
        sid = self.h2.get_next_available_stream_id()
        hs = [(":method", method), (":path", path), (":scheme", scheme),
              (":authority", authority)] + list(headers)
        self.streams[sid] = Stream(sid)
        self.h2.send_headers(sid, hs, end_stream=(body is None and end))
        if body is not None:
            self.send_body(sid, body, end=end)
        self.flush()
        return sid

    def send_body(self, sid, body, end=True):
        """Sends body as flow control allows, reading meanwhile."""
        view = memoryview(body)
        while len(view):
            win = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if win <= 0:
                self.flush()
                self.read_once()
                if self.streams[sid].done:
                    return
                continue
            n = min(win, len(view))
            self.h2.send_data(sid, bytes(view[:n]))
            view = view[n:]
            self.flush()
        if end:
            self.h2.end_stream(sid)
            self.flush()

    def reset(self, sid, code=8):
        self.h2.reset_stream(sid, error_code=code)
        self.flush()

    def read_once(self):
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return False
        for ev in events:
            self.on_event(ev)
        self.flush()
        return True

    def on_event(self, ev):
        sid = getattr(ev, "stream_id", None)
        st = self.streams.get(sid)
        if st is not None:
            st.frames.append(type(ev).__name__)
        if isinstance(ev, h2.events.ResponseReceived):
            st.headers = [(k, v) for k, v in ev.headers]
            st.status = int(st.header(":status"))
            st.head_ended = ev.stream_ended is not None
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            pass
        elif isinstance(ev, h2.events.DataReceived):
            if st is not None:
                st.data += ev.data
            if ev.stream_id in self.no_ack:
                # the connection's window is given back, the stream's is not
                self.h2.increment_flow_control_window(ev.flow_controlled_length)
            else:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            st.trailers = [(k, v) for k, v in ev.headers]
        elif isinstance(ev, h2.events.StreamEnded):
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            if st is not None:
                st.reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (ev.error_code, ev.last_stream_id)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            for k, v in ev.changed_settings.items():
                self.settings[k] = v.new_value

    def wait(self, pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not pred():
            if self.closed:
                return pred()
            if time.monotonic() > deadline:
                raise TimeoutError("h2 wait timed out")
            try:
                self.read_once()
            except socket.timeout:
                pass
        return True

    def response(self, sid, timeout=10.0):
        self.wait(lambda: self.streams[sid].done, timeout)
        return self.streams[sid]

    def get(self, path, timeout=10.0, **kw):
        return self.response(self.request("GET", path, **kw), timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def frame(ftype, flags, sid, payload=b""):
    """One raw HTTP/2 frame."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) \
        + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def read_frames(sock, timeout=5.0, until=None):
    """Reads raw frames until EOF, `until(type, flags, sid, payload)` is true or
    the timeout; returns [(type, flags, sid, payload)]."""
    sock.settimeout(timeout)
    buf = b""
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            d = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not d:
            break
        buf += d
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            f = (buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, buf[9:9 + n])
            buf = buf[9 + n:]
            out.append(f)
            if until and until(*f):
                return out
    return out


GOAWAY = 7
RST_STREAM = 3
ENHANCE_YOUR_CALM = 11
REFUSED_STREAM = 7


def goaway_code(frames):
    for t, _, _, p in frames:
        if t == GOAWAY:
            return int.from_bytes(p[4:8], "big")
    return None
