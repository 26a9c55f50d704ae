-- Test plugin: raises a Lua error in the phase named by `phase`.
local function boom(where)
  local secret = "tb-marker-" .. where
  error("t_error exploded in " .. secret)
end
return {
  name = "t_error",
  schema = { phase = { type = "string", default = "access",
                       one_of = { "access", "response", "log" } } },
  access = function(conf, req) if conf.phase == "access" then boom("access") end end,
  response = function(conf, req, res) if conf.phase == "response" then boom("response") end end,
  log = function(conf, req, res) if conf.phase == "log" then boom("log") end end,
}
