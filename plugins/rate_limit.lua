-- rate_limit: a token bucket per key. `rate` tokens per second refill a
-- bucket of `burst` tokens (default: rate, at least 1); each request takes one. Over the
-- limit: 429 with Retry-After and RateLimit-Limit/-Remaining/-Reset, which
-- allowed responses carry too. doc/plugins/rate_limit.md has the details.
--
-- scope "local": one bucket per key for the whole instance, in a shared
-- dictionary (gw.shared) every worker takes from atomically (dict:take);
-- the built-in one, or the one `dict` names. Entries expire when their
-- bucket would be full again (a missing bucket is a full one, so LRU
-- eviction of a full dictionary never under-counts for long).
-- scope "redis": one atomic script per request (EVALSHA, EVAL when Redis
-- does not know the script yet), with Redis's clock, so every gateway of a
-- fleet shares the buckets.
local gw = gw
local util = require "moongate.plugin_util"

local M = {
  name = "rate_limit",
  priority = 910, -- Kong's rate-limiting: after authentication
  schema = {
    rate = { type = "number", required = true },
    burst = "number",
    key = { type = "string|function", default = "remote_addr" },
    scope = { type = "string", one_of = { "local", "redis" }, default = "local" },
    redis = { type = "string", default = "default" },
    redis_prefix = { type = "string", default = "moongate:rl:" },
    namespace = "string",
    fault_tolerant = { type = "boolean", default = true },
    headers = { type = "boolean", default = true },
    status = { type = "integer", default = 429 },
    message = { type = "string", default = "rate limit exceeded" },
    max_keys = { type = "integer", default = 100000 }, -- accepted; the dictionary's size bounds it
    dict = "string",
  },
}

local RATE_LIMIT_DICT = require("moongate.shared").RATE_LIMIT

-- KEYS[1] bucket; ARGV rate, burst. Returns { allowed (0/1), tokens left
-- (as a string: Redis truncates Lua numbers to integers) }.
local SCRIPT = [[
if redis.replicate_commands then pcall(redis.replicate_commands) end
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(v[1]), tonumber(v[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return { allowed, tostring(tokens) }
]]

local script_sha
-- instances in config order: the same file gives every worker (and the next
-- generation) the same bucket names, so they share and keep them
local instances = 0

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

function M.check(conf)
  if conf.rate <= 0 then return nil, "rate: must be positive" end
  -- a bucket must hold one request: rate = 0.5 alone means one every 2 s
  conf.burst = conf.burst or math.max(1, conf.rate)
  if conf.burst < 1 then return nil, "burst: must be at least 1" end
  if type(conf.key) == "string" then
    local k = conf.key
    if k ~= "remote_addr" and not k:match("^header:[%w!#$%%&'*+.^_`|~-]+$")
        and not k:match("^claim:.+$") then
      return nil, 'key: expected "remote_addr", "header:NAME", "claim:NAME" or a function'
    end
    -- split once here, not per request
    if k:sub(1, 7) == "header:" then conf._header = k:sub(8)
    elseif k ~= "remote_addr" then conf._claim = k:sub(7) end
  end
  if conf.status < 400 or conf.status > 599 then return nil, "status: expected 4xx or 5xx" end
  if conf.max_keys < 1 then return nil, "max_keys: must be positive" end
  if conf.scope == "redis" then
    script_sha = script_sha or hex(gw.crypto.digest("sha1", SCRIPT))
  end
  -- a namespace shares buckets between instances; otherwise each instance
  -- has its own, named by its place in the config and its settings (a
  -- reload that changes them starts them over)
  instances = instances + 1
  conf._prefix = conf.namespace and ("ns\0" .. conf.namespace)
    or ("c" .. instances .. "\0" .. conf.rate .. "/" .. conf.burst)
  return true
end

-- The caller's key: the configured source, falling back to the address.
local function caller(conf, req)
  local k = conf.key
  local v
  if type(k) == "function" then
    v = k(req)
    if v ~= nil then v = tostring(v) end
  elseif k == "remote_addr" then
    v = req.remote_addr
  elseif conf._header then
    v = req:header(conf._header)
  else
    local claims = req.ctx.jwt
    local c = type(claims) == "table" and claims[conf._claim] or nil
    if type(c) == "string" or type(c) == "number" then v = tostring(c) end
  end
  if v == nil or v == "" then v = req.remote_addr end
  return v
end

-- Local token bucket: returns allowed, tokens left; nil, why on failure.
local function take_local(conf, key)
  local dict = gw.shared(conf.dict or RATE_LIMIT_DICT)
  if not dict then return nil, "no shared dictionary " .. conf.dict end
  return dict:take(conf._prefix .. "\0" .. key, conf.rate, conf.burst)
end

local function take_redis(conf, key)
  local rkey = conf.redis_prefix .. key
  local rds = gw.redis(conf.redis)
  local res, err = rds:call("EVALSHA", script_sha, 1, rkey, conf.rate, conf.burst)
  if res == nil and err and err:find("NOSCRIPT", 1, true) then
    res, err = rds:call("EVAL", SCRIPT, 1, rkey, conf.rate, conf.burst)
  end
  if type(res) ~= "table" then return nil, err or "unexpected reply" end
  local tokens = tonumber(res[2])
  if tokens == nil then return nil, "unexpected reply" end
  return res[1] == 1, tokens
end

local function ceil(x)
  local i = math.ceil(x - 1e-9)
  return i < 0 and 0 or i
end

function M.access(conf, req)
  local key = caller(conf, req)
  local allowed, tokens
  if conf.scope == "local" then
    allowed, tokens = take_local(conf, key)
  else
    -- pcall: an unknown redis name raises; that is an outage here too
    local ok
    ok, allowed, tokens = pcall(take_redis, conf, (conf.namespace or req.route or "") .. ":" .. key)
    if not ok then allowed, tokens = nil, allowed end
  end
  if allowed == nil then
    local err = tokens
    local what = conf.scope == "local" and "shared dictionary" or "redis"
    -- one line per 10 s, not one per request, while Redis is down
    local now = gw.now()
    local say = not conf._warned or now - conf._warned >= 10
    if say then conf._warned = now end
    if conf.fault_tolerant then
      if say then
        gw.log("warn", "rate_limit: ", what, " failed, letting requests through: ", tostring(err))
      end
      return
    end
    if say then gw.log("error", "rate_limit: ", what, " failed: ", tostring(err)) end
    return util.json_error(req, 503, "rate limiter unavailable")
  end
  local h = {
    ["RateLimit-Limit"] = tostring(math.floor(conf.burst)),
    ["RateLimit-Remaining"] = tostring(math.floor(tokens)),
    -- seconds until the bucket is full again
    ["RateLimit-Reset"] = tostring(ceil((conf.burst - tokens) / conf.rate)),
  }
  if not allowed then
    h["Retry-After"] = tostring(math.max(1, ceil((1 - tokens) / conf.rate)))
    return util.json_error(req, conf.status, conf.message, h)
  end
  if conf.headers then req.ctx._rate_limit_headers = h end
end

function M.response(conf, req, res)
  local h = conf.headers and req.ctx._rate_limit_headers
  if not h then return end
  for k, v in pairs(h) do res:set_header(k, v) end
end

return M
