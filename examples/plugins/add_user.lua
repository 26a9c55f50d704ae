-- add_user: the example plugin of doc/plugins.md.
--
-- Looks the caller's API key (a request header) up in a table of users.
-- A known key puts the user's name in req.ctx.user for the plugins and the
-- handler that follow, and in a request header; the key itself is removed.
-- An unknown or missing key is answered 401 with a JSON body, unless
-- anonymous = true. Answers (proxied or from the handler) get the user in a response header,
-- and every request is logged with its user after the response went out.
return {
  name = "add_user",
  priority = 900,                       -- higher runs first within a route

  schema = {
    users      = { type = "table", required = true },       -- { [api_key] = "name" }
    key_header = { type = "string", default = "X-Api-Key" },
    header     = { type = "string", default = "X-User" },
    anonymous  = { type = "boolean", default = false },
    log_level  = { type = "string", one_of = { "info", "debug" }, default = "info" },
  },

  -- Runs once per route at load time (and by `moongate -t`), after the
  -- schema check and with defaults filled in.
  check = function(conf)
    for key, name in pairs(conf.users) do
      if type(key) ~= "string" or type(name) ~= "string" then
        return nil, "users: expected { [\"api key\"] = \"user name\" }"
      end
    end
    return true
  end,

  access = function(conf, req)
    local key = req:header(conf.key_header)
    local user = key and conf.users[key]
    if user == nil then
      if not conf.anonymous then
        return req:respond(401, gw.json.encode({ error = "unknown api key" }),
                           { ["Content-Type"] = "application/json" })
      end
      user = "anonymous"
    end
    req.ctx.user = user
    req:remove_header(conf.key_header)
    req:set_header(conf.header, user)
  end,

  -- Also runs for the 401 given above (and for handler answers): no user then.
  response = function(conf, req, res)
    if req.ctx.user then res:set_header(conf.header, req.ctx.user) end
  end,

  log = function(conf, req, res)
    gw.log(conf.log_level, "user ", req.ctx.user or "-", " ", req.method, " ", req.path,
           " -> ", res.status)
  end,
}
