-- Test plugin whose check() rejects min > max.
return {
  name = "t_check",
  schema = { min = "number", max = "number" },
  check = function(conf)
    if conf.min and conf.max and conf.min > conf.max then
      return false, "min must not exceed max"
    end
    return true
  end,
  access = function(conf, req) req:set_header("X-Range", conf.min .. "-" .. conf.max) end,
}
