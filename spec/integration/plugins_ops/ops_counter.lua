-- Operations test plugin: answers "<n>", the number of requests this worker's
-- copy of the plugin has answered (a per-worker upvalue). Two workers answer
-- with overlapping numbers, so a test can tell both of them served.
local n = 0

return {
  name = "ops_counter",
  schema = {},
  access = function(conf, req)
    n = n + 1
    req:respond(200, tostring(n))
  end,
}
