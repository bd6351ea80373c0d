-- Idle consumers of a queue: its `waiters` and their inboxes.
-- uses: base
local function redis_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live_waiters()
  local key = base .. 'waiters'
  if redis.call('EXISTS', key) == 0 then return {} end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', redis_ms())
  return redis.call('ZRANGE', key, 0, -1)
end
local function hand(member, item)
  -- sent on the consumer's channel; kept in its list for a registration ended meanwhile
  local inbox = base .. 'inbox:' .. string.match(member, '^([^:]*)')
  redis.call('RPUSH', inbox, item)
  redis.call('PEXPIRE', inbox, 60000)
  redis.call('PUBLISH', inbox, item)
end
