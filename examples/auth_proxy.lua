-- The hyper-auth-proxy scenario: JWT cookie -> Redis session -> Basic auth
-- -> backend (examples/README.md shows the redis-server and curl steps).
return {
  listen = { { addr = "127.0.0.1:8080" } },
  access_log = "stdout",
  redis = { default = { addr = "127.0.0.1:6379", pool = 8, timeout = 0.5 } },
  upstreams = { backend = { servers = { "127.0.0.1:9000" } } },
  routes = {
    { name = "backend", match = { prefix = "/" },
      plugins = { { "redis_credentials", secret = "proxy-secret", algorithms = { "HS512" },
                    cookie = "Authorization", claim = "sid", key_prefix = "" } },
      upstream = "backend" },
  },
}
