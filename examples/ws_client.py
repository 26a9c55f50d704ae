#!/usr/bin/env python3
"""A WebSocket client for examples/websocket.lua (python3-websockets).

    python3 examples/ws_client.py URL MESSAGE...

Sends each MESSAGE, prints each answer, then closes with code 1000. A URL
with user:password@ sends them as Basic credentials. Exits 1 (with the
reason on stderr) if the handshake is refused.
"""
import asyncio
import sys

import websockets


async def main(url, messages):
    try:
        async with websockets.connect(url, max_size=None) as ws:
            for m in messages:
                await ws.send(m)
                print(await ws.recv(), flush=True)
    except websockets.InvalidStatusCode as e:
        print("refused: HTTP %d" % e.status_code, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2:])))
