-- Test plugin: stores a value in req.ctx (runs before t_ctx_get).
return {
  name = "t_ctx_set",
  priority = 200,
  access = function(conf, req)
    req.ctx.who = "set-by-t_ctx_set"
    req.ctx.n = (req.ctx.n or 0) + 1
  end,
}
