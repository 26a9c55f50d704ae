-- Traefik-style ForwardAuth in front of an app (examples/README.md).
-- The auth server here is a handler route of the same gateway, so the
-- example runs with nothing else than the demo upstream:
--   bash examples/run-quickstart.sh build/moongate examples/forward_auth.lua
--   curl -i localhost:8080/app/                         -> 401 from the auth server
--   curl -i -H "X-Api-Key: let-me-in" localhost:8080/app/ -> 200, upstream sees X-User
-- Ports from the environment (examples/README.md), else the usual ones:
local port = os.getenv("MOONGATE_PORT") or "8080"           -- the gateway
local upstream_port = os.getenv("UPSTREAM_PORT") or "9000"  -- the demo upstream
return {
  listen = { { addr = "127.0.0.1:" .. port } },
  access_log = "stdout",
  upstreams = { demo = { servers = { "127.0.0.1:" .. upstream_port } } },
  routes = {
    -- the auth server: 2xx lets the request through, anything else is the answer
    { name = "auth", match = { path = "/_auth" },
      handler = function(req)
        if req:header("x-api-key") == "let-me-in" then
          return 200, "", { ["X-User"] = "alice" }
        end
        return 401, '{"error":"who are you?"}', { ["Content-Type"] = "application/json",
                                                 ["WWW-Authenticate"] = "ApiKey" }
      end },
    { name = "app", match = { prefix = "/app/" },
      plugins = { { "forward_auth", address = "http://127.0.0.1:" .. port .. "/_auth",
                    auth_response_headers = { "X-User" }, timeout = 2,
                    cache_ttl = 5, cache_key = { "X-Api-Key" } } },
      upstream = "demo" },
  },
}
