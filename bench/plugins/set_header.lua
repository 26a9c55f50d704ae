-- bench/plugins.sh test plugin: sets one request header before the
-- request goes upstream (default X-Bench: 1).
return {
  name = "set_header",
  schema = {
    header = { type = "string", default = "X-Bench" },
    value = { type = "string", default = "1" },
  },
  access = function(conf, req)
    req:set_header(conf.header, conf.value)
  end,
}
