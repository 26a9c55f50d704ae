-- Test plugin: yields the request coroutine directly, not through a gw call.
return {
  name = "t_yield",
  access = function(conf, req) coroutine.yield("surprise") end,
}
