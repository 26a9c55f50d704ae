#!/usr/bin/env python3
"""A WebSocket echo server for examples/websocket.lua (python3-websockets).

    python3 examples/ws_echo.py [PORT]       PORT: argument, $UPSTREAM_PORT, or 9000

Every message comes back as sent (text as text, binary as binary); a plain
HTTP request (no upgrade) gets "plain http\\n".
"""
import asyncio
import http
import os
import sys

import websockets


async def echo(ws, path):
    async for msg in ws:
        await ws.send(msg)


async def plain(path, headers):
    if headers.get("Upgrade", "").lower() != "websocket":
        return http.HTTPStatus.OK, [("Content-Type", "text/plain")], b"plain http\n"
    return None


async def main(port):
    async with websockets.serve(echo, "127.0.0.1", port, process_request=plain,
                                max_size=None):
        print("websocket echo on 127.0.0.1:%d" % port, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1] if len(sys.argv) > 1 else
                         os.environ.get("UPSTREAM_PORT", "9000"))))
