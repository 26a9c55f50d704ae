"""A WebSocket upstream for the tunnel tests (python3-websockets 10, asyncio).

    wsecho.py --port N [--cert C --key K]

Paths:
  /echo          echoes every message (text stays text, binary stays binary);
                 pings are answered by the library
  /close/CODE    closes at once with CODE and reason "bye"
  /closeafter/CODE  echoes one message, then closes with CODE
  /flood/MB      sends MB MiB in 1 MiB binary messages without reading, then waits
  /hold          accepts and waits for the peer to close
  /__stats       (plain HTTP) {"handshakes": n, "open": m, "closes": [[code, reason], ...]}
  /plain         (plain HTTP, also for upgrade requests) 200 "plain", no switch
Any other path: 404 without switching. The query string is ignored.
"""

import argparse
import asyncio
import http
import json
import ssl

import websockets

STATS = {"handshakes": 0, "open": 0, "closes": []}


async def process_request(path, headers):
    path = path.split("?", 1)[0]
    if path == "/__stats":
        return (http.HTTPStatus.OK, [("Content-Type", "application/json")],
                json.dumps(STATS).encode())
    if path == "/plain":
        return (http.HTTPStatus.OK, [("Content-Type", "text/plain")], b"plain")
    known = ("/echo", "/close/", "/closeafter/", "/flood/", "/hold")
    if not any(path == k or (k.endswith("/") and path.startswith(k)) for k in known):
        return (http.HTTPStatus.NOT_FOUND, [], b"no such path")
    STATS["handshakes"] += 1
    return None


async def handler(ws, path):
    path = path.split("?", 1)[0]
    STATS["open"] += 1
    try:
        if path == "/echo":
            async for msg in ws:
                await ws.send(msg)
        elif path.startswith("/close/"):
            await ws.close(code=int(path.split("/")[2]), reason="bye")
        elif path.startswith("/closeafter/"):
            msg = await ws.recv()
            await ws.send(msg)
            await ws.close(code=int(path.split("/")[2]), reason="bye")
        elif path.startswith("/flood/"):
            chunk = b"\x5a" * (1 << 20)
            for _ in range(int(path.split("/")[2])):
                await ws.send(chunk)
            await ws.wait_closed()
        elif path == "/hold":
            await ws.wait_closed()
    except websockets.ConnectionClosed:
        pass
    finally:
        STATS["open"] -= 1
        STATS["closes"].append([ws.close_code, ws.close_reason])


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    ctx = None
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
    async with websockets.serve(handler, "127.0.0.1", a.port, process_request=process_request,
                                ssl=ctx, max_size=None, max_queue=4, compression=None,
                                ping_interval=None, backlog=2048):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
