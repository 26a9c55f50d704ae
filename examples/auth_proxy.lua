-- The hyper-auth-proxy scenario: JWT cookie -> Redis session -> Basic auth
-- -> backend (examples/README.md shows the redis-server and curl steps).
-- Ports from the environment (examples/README.md), else the usual ones:
local port = os.getenv("MOONGATE_PORT") or "8080"           -- the gateway
local upstream_port = os.getenv("UPSTREAM_PORT") or "9000"  -- the demo upstream
local redis_port = os.getenv("REDIS_PORT") or "6379"
return {
  listen = { { addr = "127.0.0.1:" .. port } },
  access_log = "stdout",
  redis = { default = { addr = "127.0.0.1:" .. redis_port, pool = 8, timeout = 0.5 } },
  upstreams = { backend = { servers = { "127.0.0.1:" .. upstream_port } } },
  routes = {
    { name = "backend", match = { prefix = "/" },
      plugins = { { "redis_credentials", secret = "proxy-secret", algorithms = { "HS512" },
                    cookie = "Authorization", claim = "sid", key_prefix = "" } },
      upstream = "backend" },
  },
}
