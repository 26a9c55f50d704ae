-- The quickstart: `make run` starts a tiny demo upstream on 127.0.0.1:9000
-- (examples/run-quickstart.sh) and moongate on 127.0.0.1:8080 with this file.
--   curl -i localhost:8080/hello        -- answered by a Lua handler
--   curl -i localhost:8080/app/         -- proxied to the demo upstream
--   curl -i localhost:8080/nope         -- 404 {"error":"no route"}
--   curl -i localhost:8080/api/         -- 401: the jwt plugin wants a token
--   curl -i -H "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.UixtVIMi8w4GH7-wbyRtpmwQ_4qWLVw9jH1D45rn9jI" localhost:8080/api/
--                                       -- 200, proxied with X-User: alice
--   curl -s localhost:9901/metrics      -- Prometheus metrics (admin listener)
-- Ports from the environment (examples/README.md), else the usual ones:
local port = os.getenv("MOONGATE_PORT") or "8080"           -- the gateway
local upstream_port = os.getenv("UPSTREAM_PORT") or "9000"  -- the demo upstream
local admin_port = os.getenv("ADMIN_PORT") or "9901"        -- the admin API
return {
  workers = 1,
  listen = { { addr = "127.0.0.1:" .. port } },
  admin = { addr = "127.0.0.1:" .. admin_port },
  access_log = "stdout",
  limits = { max_body_bytes = 1048576, header_timeout = 10, idle_timeout = 60 },
  upstreams = {
    demo = { servers = { "127.0.0.1:" .. upstream_port }, keepalive = 16, connect_timeout = 1,
             read_timeout = 10, retries = 1 },
  },
  routes = {
    { name = "hello", match = { path = "/hello" },
      handler = function(req) return 200, "Hello, World\n" end },
    { name = "whoami", match = { path = "/whoami", methods = { "GET" } },
      handler = function(req)
        return 200, { "you are ", req.remote_addr, ", asking for ", req.path, "\n" },
               { ["X-Served-By"] = "moongate" }
      end },
    { name = "app", match = { prefix = "/app/" }, upstream = "demo" },
    -- a JWT-guarded API (examples/jwt_api.lua has more)
    { name = "api", match = { prefix = "/api/" },
      plugins = { { "jwt", secret = "quickstart-secret", claims_to_headers = { sub = "X-User" } },
                  { "request_id" } },
      upstream = "demo" },
  },
}
