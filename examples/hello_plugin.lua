-- The plugin guide's example (doc/plugins.md): examples/plugins/add_user.lua
-- on two routes. Start it with the demo upstream on 127.0.0.1:9000:
--   make run CONFIG=examples/hello_plugin.lua
-- then:
--   curl -i localhost:8080/me                          -- 401 {"error":"unknown api key"}
--   curl -i -H 'X-Api-Key: k-alice' localhost:8080/me  -- 200 hello alice
--   curl -i -H 'X-Api-Key: k-bob' localhost:8080/app/  -- proxied, X-User: bob
--   curl -i localhost:8080/app/                        -- proxied, X-User: anonymous
-- Ports from the environment (examples/README.md), else the usual ones:
local port = os.getenv("MOONGATE_PORT") or "8080"           -- the gateway
local upstream_port = os.getenv("UPSTREAM_PORT") or "9000"  -- the demo upstream
return {
  listen = { { addr = "127.0.0.1:" .. port } },
  access_log = "stdout",
  plugin_path = { "plugins" },         -- relative to this file: examples/plugins
  upstreams = {
    demo = { servers = { "127.0.0.1:" .. upstream_port } },
  },
  routes = {
    { name = "me", match = { path = "/me" },
      plugins = { { "add_user", users = { ["k-alice"] = "alice", ["k-bob"] = "bob" } } },
      handler = function(req) return 200, { "hello ", req.ctx.user, "\n" } end },
    { name = "app", match = { prefix = "/app/" }, upstream = "demo",
      plugins = { { "add_user", users = { ["k-bob"] = "bob" }, anonymous = true } } },
  },
}
