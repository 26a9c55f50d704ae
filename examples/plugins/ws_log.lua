-- examples/websocket.lua's log plugin: on a tunnel, the log phase runs once,
-- when the tunnel closes, with res.status 101.
return {
  name = "ws_log",
  access = function(conf, req)
    req.ctx.opened = gw.now()
  end,
  log = function(conf, req, res)
    gw.log("info", "route ", req.route, ": ", req.upgrade or "no upgrade", " ", req.path,
           " -> ", res.status, string.format(" after %.1fs", gw.now() - req.ctx.opened))
  end,
}
