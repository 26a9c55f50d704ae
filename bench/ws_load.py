#!/usr/bin/env python3
"""WebSocket load for bench/ws.sh (asyncio, standard library only).

  ws_load.py server --port P
      A WebSocket origin: answers the upgrade handshake (RFC 6455
      Sec-WebSocket-Accept), then echoes every byte it gets back as is. The
      client's frames are masked, so the echoed frames are too: a byte-level
      echo, which is all a gateway sees of the tunnel (it relays bytes).
  ws_load.py client --port P --conns N --size B --window W --warmup S --duration S
      N connections through the gateway, each keeping W messages of B payload
      bytes in flight; prints
      "MGWS msgs=<echoes in the measured window> secs=<s> rate=<msgs/s> errors=<n>
      total=<echoes since the start, warm-up included>".
      Every connection checks its first echo byte for byte.
  ws_load.py idle --port P --conns N
      Opens N tunnels (handshake, one echo each), prints "MGWS ready <open>
      failed <n>" and holds the open ones until killed.
"""

import argparse
import asyncio
import base64
import hashlib
import os
import resource
import struct
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


def more_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def masked_frame(payload):
    key = b"\x11\x22\x33\x44"
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    body = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    return head + key + body


# ---------------------------------------------------------------- server

class EchoServer(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.head = b""
        self.up = False

    def data_received(self, data):
        if self.up:
            self.t.write(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, rest = self.head.split(b"\r\n\r\n", 1)
        key = b""
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"sec-websocket-key":
                key = v.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.up = True
        if rest:
            self.t.write(rest)


async def server(a):
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(EchoServer, "127.0.0.1", a.port, backlog=4096)
    print("MGWS listening", flush=True)
    async with srv:
        await srv.serve_forever()


# ---------------------------------------------------------------- clients

def handshake(path="/ws"):
    key = base64.b64encode(os.urandom(16))
    return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key +
            b"\r\n\r\n")


class Conn(asyncio.Protocol):
    def __init__(self, frame, window, ready, once=False):
        self.once = once      # idle mode: one echo, then quiet
        self.frame = frame
        self.window = window
        self.ready = ready
        self.buf = b""
        self.up = False
        self.got = 0          # echoed bytes after the handshake
        self.done = 0         # echoes completed
        self.failed = None
        self.first = b""

    def connection_made(self, transport):
        self.t = transport
        transport.write(handshake())

    def data_received(self, data):
        if not self.up:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 101"):
                self.fail("no 101: %r" % head[:80])
                return
            self.up = True
            self.buf = b""
            if not self.ready.done():
                self.ready.set_result(True)
            if self.window:
                self.t.write(self.frame * self.window)
            data = rest
            if not data:
                return
        if len(self.first) < len(self.frame):
            self.first += data[: len(self.frame) - len(self.first)]
            if len(self.first) == len(self.frame) and self.first != self.frame:
                self.fail("the first echo differs from what was sent")
                return
        self.got += len(data)
        n = self.got // len(self.frame)
        if n > self.done:
            more = n - self.done
            self.done = n
            if self.window and not self.once:
                self.t.write(self.frame * more)

    def fail(self, why):
        self.failed = why
        if not self.ready.done():
            self.ready.set_result(False)
        self.t.close()

    def connection_lost(self, exc):
        if self.failed is None and self.up and self.window:
            self.failed = "closed: %s" % exc
        if not self.ready.done():
            self.ready.set_result(False)


async def open_conns(a, frame, window, once=False):
    loop = asyncio.get_running_loop()
    conns = []
    for start in range(0, a.conns, 200):
        batch = []
        for _ in range(start, min(a.conns, start + 200)):
            ready = loop.create_future()
            batch.append((loop.create_connection(lambda r=ready: Conn(frame, window, r, once),
                                                 "127.0.0.1", a.port), ready))
        for coro, ready in batch:
            _, proto = await coro
            conns.append((proto, ready))
        for proto, ready in conns[start:]:
            await asyncio.wait_for(ready, 30)
    return [p for p, _ in conns]


async def client(a):
    frame = masked_frame(os.urandom(a.size))
    conns = await open_conns(a, frame, a.window)
    errors = sum(1 for c in conns if c.failed)
    await asyncio.sleep(a.warmup)
    d0 = sum(c.done for c in conns)
    t0 = time.monotonic()
    await asyncio.sleep(a.duration)
    d1 = sum(c.done for c in conns)
    secs = time.monotonic() - t0
    errors = sum(1 for c in conns if c.failed)
    for c in conns:
        c.window = 0
        c.t.close()
    print("MGWS msgs=%d secs=%.3f rate=%.0f errors=%d total=%d"
          % (d1 - d0, secs, (d1 - d0) / secs, errors, d1), flush=True)
    for c in conns:
        if c.failed:
            print("  error: %s" % c.failed, file=sys.stderr)
            break


async def idle(a):
    frame = masked_frame(b"0123456789abcdef")
    conns = await open_conns(a, frame, 1, once=True)
    await asyncio.sleep(0.5)
    bad = [c for c in conns if c.failed or c.done < 1]
    if bad:  # e.g. the gateway ran out of file descriptors: say so, keep the rest
        print("  %d of %d failed: %s" % (len(bad), len(conns), bad[0].failed), file=sys.stderr,
              flush=True)
    if len(bad) == len(conns):
        print("MGWS failed %d of %d" % (len(bad), len(conns)), flush=True)
        return
    for c in conns:
        c.window = 0
    print("MGWS ready %d failed %d" % (len(conns) - len(bad), len(bad)), flush=True)
    await asyncio.Future()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["server", "client", "idle"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=100)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--duration", type=float, default=10)
    a = ap.parse_args()
    more_fds()
    asyncio.run({"server": server, "client": client, "idle": idle}[a.mode](a))


if __name__ == "__main__":
    main()
