-- Moves due waiting entries back to ready. Shared head of FETCH.
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  for _, id in ipairs(due) do
    local state = redis.call('HGET', KEYS[4], id)
    redis.call('ZREM', KEYS[2], id)
    if state and redis.call('HEXISTS', KEYS[3], id) == 1 then
      local score, attempts = string.match(state, '^([^:]*):([^:]*):')
      redis.call('HSET', KEYS[4], id, score .. ':' .. attempts .. ':')
      redis.call('ZADD', KEYS[1], score, id)
    end
  end
end
