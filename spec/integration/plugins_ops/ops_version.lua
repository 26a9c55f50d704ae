-- Operations test plugin. The tests copy this file next to their config,
-- replace the VERSION line (to change the behaviour or break the syntax) and
-- reload. Options: version (overrides VERSION), sleep (seconds; ?sleep=S in
-- the query overrides), mode = "header" (let the request through and set
-- X-Ops-Version on the response instead of answering).
local VERSION = "v1"

return {
  name = "ops_version",
  schema = { version = "string", sleep = "number", mode = "string" },
  access = function(conf, req)
    local s = conf.sleep
    local q = req.query and req.query:match("sleep=([%d.]+)")
    if q then s = tonumber(q) end
    if s and s > 0 then gw.sleep(s) end
    local v = conf.version or VERSION
    if conf.mode == "header" then
      req.ctx.ops_version = v
      return
    end
    req:respond(200, v, { ["X-Ops-Version"] = v })
  end,
  response = function(conf, req, res)
    if req.ctx.ops_version then res:set_header("X-Ops-Version", req.ctx.ops_version) end
  end,
}
