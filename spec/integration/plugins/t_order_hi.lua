-- Test plugin: appends its tag to the request header X-Order (access phase)
-- and to the response header X-Order-Res (response phase), so the order in
-- which a route's plugins ran is visible at the upstream and at the client.
return {
  name = "t_order_hi",
  priority = 300,
  schema = { tag = "string" },
  access = function(conf, req)
    local tag = conf.tag or "hi"
    local cur = req:header("x-order")
    req:set_header("X-Order", cur and (cur .. "," .. tag) or tag)
  end,
  response = function(conf, req, res)
    local tag = conf.tag or "hi"
    local cur = res:header("x-order-res")
    res:set_header("X-Order-Res", cur and (cur .. "," .. tag) or tag)
  end,
}
