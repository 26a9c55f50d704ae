-- Test plugin: runs the functions given in its options in the matching phase,
-- so a test config can hold the phase code inline:
--   { "t_hook", access = function(req) ... end, log = function(req, res) ... end }
return {
  name = "t_hook",
  schema = { access = "function", response = "function", log = "function" },
  access = function(conf, req)
    if conf.access then return conf.access(req) end
  end,
  response = function(conf, req, res)
    if conf.response then return conf.response(req, res) end
  end,
  log = function(conf, req, res)
    if conf.log then return conf.log(req, res) end
  end,
}
