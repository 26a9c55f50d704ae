-- Test plugin: answers the request itself in the access phase.
return {
  name = "t_respond",
  priority = 1000,
  schema = { status = { type = "integer", default = 403 }, body = "string|table" },
  access = function(conf, req)
    req:respond(conf.status, conf.body or "denied by t_respond",
                { ["X-Short"] = "t_respond", ["Content-Type"] = "text/x-test" })
  end,
}
