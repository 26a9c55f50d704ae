-- A JWT-guarded API, as with Kong/APISIX's jwt plugins (examples/README.md).
--   bash examples/run-quickstart.sh build/moongate examples/jwt_api.lua
--   curl -i localhost:8080/api/                                   -> 401
--   curl -i -H "Authorization: Bearer $TOKEN" localhost:8080/api/ -> 200
-- Tokens: HS256 with the secret below (examples/README.md shows how to make
-- one with openssl), or RS256/ES256/EdDSA keys via public_key_file/jwks_url.
-- Ports from the environment (examples/README.md), else the usual ones:
local port = os.getenv("MOONGATE_PORT") or "8080"           -- the gateway
local upstream_port = os.getenv("UPSTREAM_PORT") or "9000"  -- the demo upstream
return {
  listen = { { addr = "127.0.0.1:" .. port } },
  access_log = "stdout",
  upstreams = { demo = { servers = { "127.0.0.1:" .. upstream_port } } },
  routes = {
    { name = "api", match = { prefix = "/api/" },
      plugins = {
        { "jwt", secret = "quickstart-secret", algorithms = { "HS256" }, leeway = 5,
          claims_to_headers = { sub = "X-User" } },
        { "rate_limit", rate = 50, burst = 100, key = "claim:sub" },
      },
      upstream = "demo" },
  },
}
