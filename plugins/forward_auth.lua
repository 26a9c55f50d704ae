-- forward_auth: Traefik's ForwardAuth middleware, option for option, so a
-- Traefik user can move over unchanged (doc/plugins/forward_auth.md).
--
-- Every request is first sent to `address` (with the client's headers and
-- X-Forwarded-*). A 2xx lets it through, after copying the listed auth
-- response headers into it; anything else is the answer the client gets.
local util = require "moongate.plugin_util"
local pairs = pairs

-- Not sent to the auth server: hop-by-hop headers (RFC 9110 7.6.1), and
-- Host and Content-Length, which are the auth request's own. Like Traefik,
-- Proxy-Authorization and Proxy-Authenticate do go (RFC 9110 11.7.2: a
-- proxy may use them for its own authentication).
local REQ_DROP = {
  ["connection"] = true, ["keep-alive"] = true, ["te"] = true, ["trailer"] = true,
  ["trailers"] = true, ["transfer-encoding"] = true, ["upgrade"] = true,
  ["proxy-connection"] = true, ["content-length"] = true, ["host"] = true,
}

-- With trust_forward_header = false, also every X-Forwarded-* (and
-- X-Real-Ip, X-Scheme) header the client sent, in any spelling with "_"
-- for "-" ("x_forwarded_for", "x-forwarded_prefix"...): the ones we set are
-- then ours alone, and a client cannot pass an X-Forwarded-Prefix of its
-- choosing, nor fool a back end that reads "_" as "-" (CGI, WSGI). As
-- Traefik (its managed X- headers). All spellings are listed here, so the
-- request path does one table lookup per header.
local REQ_DROP_UNTRUSTED = {}
for k in pairs(REQ_DROP) do REQ_DROP_UNTRUSTED[k] = true end
local function spellings(name, from)
  local i = name:find("-", from, true)
  if not i then
    REQ_DROP_UNTRUSTED[name] = true
    return
  end
  spellings(name, i + 1)
  spellings(name:sub(1, i - 1) .. "_" .. name:sub(i + 1), i + 1)
end
for _, name in ipairs { "x-forwarded-method", "x-forwarded-proto", "x-forwarded-host",
                        "x-forwarded-uri", "x-forwarded-for", "x-forwarded-port",
                        "x-forwarded-prefix", "x-forwarded-server", "x-forwarded-scheme",
                        "x-forwarded-tls-client-cert", "x-forwarded-tls-client-cert-info",
                        "x-real-ip", "x-scheme" } do
  spellings(name, 1)
end

-- Not passed from a denial to the client (as Traefik: hop-by-hop ones; the
-- framing is the gateway's). Proxy-Authenticate and the rest go through.
local RES_DROP = {
  ["connection"] = true, ["keep-alive"] = true, ["te"] = true, ["trailer"] = true,
  ["trailers"] = true, ["transfer-encoding"] = true, ["upgrade"] = true,
  ["proxy-connection"] = true, ["content-length"] = true,
}

-- Traefik's regex options are Go regexps; plain header-name patterns
-- ("^X-Auth-.*", "X-User|X-Email" is not supported) are translated to Lua
-- patterns: ^ $ . * + ? [] and backslash escapes. Header names are
-- case-insensitive, so the pattern is lower-cased and matched against
-- lower-cased names.
local function regex_to_pattern(re)
  re = re:gsub("(\\?)(%a)", function(esc, c) return esc == "" and c:lower() or esc .. c end)
  local out = {}
  local i = 1
  while i <= #re do
    local c = re:sub(i, i)
    if c == "\\" then
      local n = re:sub(i + 1, i + 1)
      if n == "d" then out[#out + 1] = "%d"
      elseif n == "w" then out[#out + 1] = "[%w_]"
      elseif n == "s" then out[#out + 1] = "%s"
      else out[#out + 1] = "%" .. n end
      i = i + 2
    elseif c == "-" then
      out[#out + 1] = "%-"
      i = i + 1
    elseif c == "|" or c == "(" or c == ")" or c == "{" then
      return nil, "unsupported regex feature '" .. c .. "'"
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  return table.concat(out)
end

local function lower_set(list)
  local s = {}
  for _, v in ipairs(list or {}) do s[v:lower()] = true end
  return s
end

local function absolute_location(loc, address)
  if loc:match("^%a[%w+.-]*://") then return loc end
  local scheme_host = address:match("^(%a[%w+.-]*://[^/]+)")
  if not scheme_host then return loc end
  if loc:sub(1, 1) == "/" then return scheme_host .. loc end
  local base = address:match("^(%a[%w+.-]*://.*/)") or (scheme_host .. "/")
  return base .. loc
end

local function cache_key(conf, req)
  local parts = { conf._cache_id }
  for _, name in ipairs(conf.cache_key) do
    parts[#parts + 1] = name:lower() .. "=" .. (req:header(name) or "")
  end
  return table.concat(parts, "\0")
end

-- Deletes (no client spoofing) then copies the auth response's headers.
local function copy_auth_headers(conf, req, copied)
  for _, name in ipairs(conf._response_list) do
    req:remove_header(name)
  end
  if conf._pattern then
    for name in pairs(req:headers()) do -- names come lower-cased
      if name:match(conf._pattern) then req:remove_header(name) end
    end
  end
  for i = 1, #copied, 2 do
    req:set_header(copied[i], copied[i + 1])
  end
end

-- The auth call's arguments: the X-Forwarded-* we set (a flat list, sent
-- in this order; they replace what the client sent under those names) and
-- the call's options. gw.http reads its arguments before it yields, so
-- these two tables, refilled for each request, serve every request in
-- turn: none is built per request.
local XF = { "x-forwarded-method", "", "x-forwarded-proto", "", "x-forwarded-host", "",
             "x-forwarded-uri", "", "x-forwarded-for", "", "x-forwarded-port", "" }
local CALL = { headers = XF }

-- The port X-Forwarded-Port names: Host's, if it has one. Remembered per
-- Host value (a few per route in practice; the memo starts over when it
-- grows large).
local ports, nports = {}, 0
local function port_of(host)
  local p = ports[host]
  if p == nil then
    p = host:match(":(%d+)$") or false
    if nports >= 1024 then ports, nports = {}, 0 end
    ports[host], nports = p, nports + 1
  end
  return p or nil
end

-- With trust_forward_header: the client's X-Forwarded-* that would reach
-- the auth server (allowed by auth_request_headers, not named by its
-- Connection header), lower-case names, repeated ones joined with ", ".
local function client_forwarded(conf, req)
  local theirs = req:headers()
  local allow = conf._request_set
  local connection = req:header("connection")
  for name in pairs(theirs) do
    if allow ~= nil and not allow[name] then theirs[name] = nil end
  end
  if connection then
    for token in connection:gmatch("[^,%s]+") do theirs[token:lower()] = nil end
  end
  return theirs
end

-- The auth request's template (url, options and the header filters parsed
-- once), made on first use in the worker.
local function template(conf)
  local drop = {}
  for name in pairs(conf.trust_forward_header and REQ_DROP or REQ_DROP_UNTRUSTED) do
    drop[#drop + 1] = name
  end
  conf._http = gw.http.template {
    url = conf.address, timeout = conf.timeout, tls_verify = conf.tls_verify,
    forward_drop = drop, forward_only = conf.auth_request_headers, lazy_headers = true,
  }
  return conf._http
end

-- The auth server could not be asked: status_on_error, with the short JSON
-- body of every gateway error (Traefik sends an empty body).
local function fail(conf, req, why)
  gw.log("warn", "forward_auth: ", conf.address, ": ", why)
  return util.json_error(req, conf.status_on_error, "authentication service unavailable")
end

return {
  name = "forward_auth",
  priority = 1800,
  schema = {
    address = { type = "string", required = true },
    trust_forward_header = { type = "boolean", default = false },
    auth_response_headers = "table",
    auth_response_headers_regex = "string",
    auth_request_headers = "table",
    forward_body = { type = "boolean", default = false },
    max_body_size = { type = "integer", default = -1 },
    preserve_request_method = { type = "boolean", default = false },
    preserve_location_header = { type = "boolean", default = false },
    auth_signin_url = "string",
    timeout = { type = "number", default = 30 },
    status_on_error = { type = "integer", default = 500 },
    tls_verify = { type = "boolean", default = true },
    cache_ttl = "number",
    cache_key = "table",
  },

  check = function(conf)
    if not conf.address:match("^https?://[^/]") then
      return nil, "address must be an http:// or https:// URL"
    end
    if conf.auth_response_headers_regex then
      local p, err = regex_to_pattern(conf.auth_response_headers_regex)
      if not p then return nil, "auth_response_headers_regex: " .. err end
      conf._pattern = p
    end
    conf._response_set = lower_set(conf.auth_response_headers)
    conf._response_list = conf.auth_response_headers or {} -- no table per request
    conf._request_set = conf.auth_request_headers and lower_set(conf.auth_request_headers)
    if conf.cache_ttl and not conf.cache_key then
      return nil, "cache_ttl needs cache_key (the headers that identify the caller)"
    end
    -- one route's decisions (and the headers it copies) are not another's,
    -- nor do they outlive this config generation
    conf._cache_id = "forward_auth\0" .. gw.crypto.random(12)
    if conf.status_on_error < 100 or conf.status_on_error > 599 then
      return nil, "status_on_error must be an HTTP status"
    end
    return true
  end,

  access = function(conf, req)
    local key
    if conf.cache_ttl then
      key = cache_key(conf, req)
      local copied = gw.cache:get(key)
      if copied then return copy_auth_headers(conf, req, copied) end
    end

    local host = req:header("host") or ""
    local uri = req.path
    local query = req.query
    if query ~= "" then uri = uri .. "?" .. query end
    local remote = req.remote_addr
    local scheme = req.scheme
    local port = port_of(host) or (scheme == "https" and "443" or "80")
    local body
    if conf.forward_body then
      body = req:body()
      if not body or (conf.max_body_size >= 0 and #body > conf.max_body_size) then
        return util.json_error(req, 413, "request body too large")
      end
    end

    -- from here to the call nothing yields: XF and CALL are this request's
    local xf = XF
    if conf.trust_forward_header then
      -- the client's X-Forwarded-* (those the allow-list let through) win;
      -- we fill in the missing ones and append to X-Forwarded-For
      local theirs = client_forwarded(conf, req)
      local xff = theirs["x-forwarded-for"]
      xf[2] = theirs["x-forwarded-method"] or req.method
      xf[4] = theirs["x-forwarded-proto"] or scheme
      xf[6] = theirs["x-forwarded-host"] or host
      xf[8] = theirs["x-forwarded-uri"] or uri
      xf[10] = xff and (xff .. ", " .. remote) or remote
      xf[12] = theirs["x-forwarded-port"] or port
    else
      xf[2], xf[4], xf[6], xf[8], xf[10], xf[12] = req.method, scheme, host, uri, remote, port
    end

    -- the client's headers go along from C (no table of them is built),
    -- filtered by the template's drop and allow lists and the client's
    -- Connection header
    local call = CALL
    call.method = conf.preserve_request_method and req.method or nil
    call.forward, call.body = req, body
    local res, err = (conf._http or template(conf)):request(call)
    call.forward, call.body = nil, nil -- not kept alive by the next request's table
    if not res then return fail(conf, req, err) end

    local status = res.status
    if status >= 200 and status < 300 then
      local listed = conf.auth_response_headers
      if not key and not conf._pattern then
        -- deleting then copying a listed header is setting it, or deleting
        -- it when the auth server sent none
        if listed then
          for i = 1, #listed do
            local value, values = res:header(listed[i])
            if value then req:set_header(listed[i], values or value)
            else req:remove_header(listed[i]) end
          end
        end
        return
      end
      -- copied = { name1, value1, name2, value2, ... }; a value is a list
      -- when the auth server sent that header more than once: each field
      -- reaches the upstream as sent, as in Traefik
      local copied = {}
      if listed then
        for i = 1, #listed do
          local value, values = res:header(listed[i])
          if value then
            copied[#copied + 1] = listed[i]
            copied[#copied + 1] = values or value
          end
        end
      end
      if conf._pattern then
        local rh = res.headers
        local rep = res.repeated_headers
        for name, value in pairs(rh) do
          if not conf._response_set[name] and name:match(conf._pattern) then
            copied[#copied + 1] = name
            copied[#copied + 1] = rep and rep[name] or value
          end
        end
      end
      if key then gw.cache:set(key, copied, conf.cache_ttl) end
      return copy_auth_headers(conf, req, copied)
    end

    if status == 401 and conf.auth_signin_url then
      return req:respond(302, "", { Location = conf.auth_signin_url })
    end
    -- a denial: the auth server's headers go to the client, but hop-by-hop
    -- and framing ones; one Location, made absolute unless preserved
    local out, location = {}, nil
    for _, h in ipairs(res.headers_list) do
      local name = h[1]
      local lname = name:lower()
      if lname == "location" then
        if not location then
          location = h[2]
          if not conf.preserve_location_header then
            location = absolute_location(location, conf.address)
          end
          out[name] = location
        end
      elseif not RES_DROP[lname] then
        local value, cur = h[2], out[name]
        if cur == nil then out[name] = value
        elseif type(cur) == "table" then cur[#cur + 1] = value
        else out[name] = { cur, value } end
      end
    end
    -- a cors grant made earlier on the route (plugin_util.json_error does
    -- the same for the other plugins' refusals)
    local cors = req.ctx._cors_headers
    if cors then
      for k, v in pairs(cors) do
        if out[k] == nil then out[k] = v end
      end
    end
    return req:respond(status, res.body, out)
  end,

  _regex_to_pattern = regex_to_pattern,
  _absolute_location = absolute_location,
}
