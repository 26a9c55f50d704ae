-- Test plugin with a schema of every kind: sets request header `header`
-- (default X-Tag) to "value[:mode][:count]".
return {
  name = "t_tag",
  priority = 10,
  schema = {
    value = { type = "string", required = true },
    header = { type = "string", default = "X-Tag" },
    mode = { type = "string", one_of = { "alpha", "beta" } },
    count = "integer",
    flag = "boolean",
  },
  access = function(conf, req)
    local v = conf.value
    if conf.mode then v = v .. ":" .. conf.mode end
    if conf.count then v = v .. ":" .. conf.count end
    req:set_header(conf.header, v)
  end,
}
