-- gw.cache: a per-worker LRU with TTL and a size cap. Entries are kept in a
-- hash and a doubly linked list (most recent at the head); get() moves an
-- entry to the head, set() evicts from the tail when the cap is reached,
-- and an expired entry is dropped when it is looked up.
local core = require "moongate.core"
local now = core.now

local Cache = {}
Cache.__index = Cache

local function unlink(self, e)
  if e.prev then e.prev.next = e.next else self.head = e.next end
  if e.next then e.next.prev = e.prev else self.tail = e.prev end
  e.prev, e.next = nil, nil
end

local function push_front(self, e)
  e.next = self.head
  e.prev = nil
  if self.head then self.head.prev = e end
  self.head = e
  if not self.tail then self.tail = e end
end

function Cache.new(max)
  return setmetatable({ map = {}, size = 0, max = max or 10000 }, Cache)
end

function Cache:get(k)
  if k == nil then return nil end
  local e = self.map[k]
  if not e then return nil end
  if e.expires and e.expires <= now() then
    self:delete(k)
    return nil
  end
  if self.head ~= e then
    unlink(self, e)
    push_front(self, e)
  end
  return e.value
end

function Cache:set(k, v, ttl)
  if k == nil or k ~= k then error("gw.cache:set: key must not be nil or NaN", 2) end
  if ttl ~= nil and (type(ttl) ~= "number" or not (ttl >= 0)) then -- NaN too
    error("gw.cache:set: ttl must be a non-negative number", 2)
  end
  if v == nil then return self:delete(k) end
  local e = self.map[k]
  if e then
    unlink(self, e)
  else
    e = { key = k }
    self.map[k] = e
    self.size = self.size + 1
  end
  e.value = v
  e.expires = (ttl and ttl > 0) and (now() + ttl) or nil
  push_front(self, e)
  while self.size > self.max do
    self:delete(self.tail.key)
  end
  return true
end

function Cache:delete(k)
  local e = self.map[k]
  if not e then return false end
  unlink(self, e)
  self.map[k] = nil
  self.size = self.size - 1
  return true
end

function Cache:count()
  return self.size
end

return Cache
