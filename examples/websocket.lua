-- WebSocket tunnels (examples/README.md). A WebSocket echo server listens
-- on 127.0.0.1:9000 (python3 examples/ws_echo.py); then:
--   bash examples/run-quickstart.sh build/moongate examples/websocket.lua
--   python3 examples/ws_client.py ws://alice:wonderland@localhost:8080/chat hello   -> hello
-- Ports from the environment (examples/README.md), else the usual ones:
local port = os.getenv("MOONGATE_PORT") or "8080"           -- the gateway
local upstream_port = os.getenv("UPSTREAM_PORT") or "9000"  -- the WebSocket echo server
local admin_port = os.getenv("ADMIN_PORT") or "9901"        -- the admin API
return {
  listen = { { addr = "127.0.0.1:" .. port } },
  admin = { addr = "127.0.0.1:" .. admin_port },
  access_log = "stdout",            -- one line per tunnel, when it closes
  limits = { tunnel_idle_timeout = 300, drain_timeout = 10 },
  upstreams = { chat = { servers = { "127.0.0.1:" .. upstream_port } } },
  routes = {
    -- the handshake is an ordinary request: basic_auth runs on it, and a
    -- refused one never reaches the upstream; websocket is tunneled by default
    { name = "chat", match = { prefix = "/chat" }, upstream = "chat",
      -- alice / wonderland, as `htpasswd -nbB alice wonderland` writes it
      plugins = { { "basic_auth", users = { alice = "$2y$05$XNLV3/uBnS/tW37FHA/46uYCbQ.8Udnu3/C2Or/eUgVh03SpGfkx2" } } } },
    -- an open echo, with the log phase at tunnel close
    { name = "echo", match = { prefix = "/echo" }, upstream = "chat",
      plugins = { "ws_log" } },
    -- this route tunnels nothing: Upgrade is dropped, the request is plain HTTP
    { name = "plain", match = { prefix = "/plain" }, upstream = "chat", upgrades = {} },
  },
  plugin_path = { "plugins" },
}
