-- The quickstart: `make run` starts a tiny demo upstream on 127.0.0.1:9000
-- (examples/run-quickstart.sh) and moongate on 127.0.0.1:8080 with this file.
--   curl -i localhost:8080/hello        -- answered by a Lua handler
--   curl -i localhost:8080/app/         -- proxied to the demo upstream
--   curl -i localhost:8080/nope         -- 404 {"error":"no route"}
return {
  workers = 1,
  listen = { { addr = "127.0.0.1:8080" } },
  access_log = "stdout",
  limits = { max_body_bytes = 1048576, header_timeout = 10, idle_timeout = 60 },
  upstreams = {
    demo = { servers = { "127.0.0.1:9000" }, keepalive = 16, connect_timeout = 1,
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
  },
}
