-- KEYS: ready, waiting, msgs, state; ARGV: visible_at_ms (0: now), uncount (0/1), (id, token)...
-- uses: owned
local visible_at = tonumber(ARGV[1])
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if lease_of(id) == ARGV[i + 1] then
    local state = redis.call('HGET', KEYS[4], id)
    local score, attempts = string.match(state, '^([^:]*):([^:]*):')
    attempts = tonumber(attempts) - tonumber(ARGV[2])
    redis.call('HSET', KEYS[4], id, score .. ':' .. attempts .. ':')
    if visible_at > 0 then
      redis.call('ZADD', KEYS[2], visible_at, id)
    else
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZADD', KEYS[1], score, id)
    end
  end
end
redis.call('PUBLISH', string.gsub(KEYS[1], ':ready$', ':notify'), '1')
return 1
