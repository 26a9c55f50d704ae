-- Test plugin: copies what t_ctx_set left in req.ctx into a request header.
return {
  name = "t_ctx_get",
  priority = 100,
  access = function(conf, req)
    req:set_header("X-Ctx", tostring(req.ctx.who) .. "/" .. tostring(req.ctx.n))
  end,
}
