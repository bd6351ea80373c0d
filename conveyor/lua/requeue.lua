-- KEYS: priorities, waiting, msgs, state; ARGV: visible_at_ms (0: now), uncount (0/1), (id, token)...
-- A message given back now goes to the head of its priority: it was taken before what is behind it.
-- uses: owned ready
local visible_at = tonumber(ARGV[1])
local back = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if lease_of(id) == ARGV[i + 1] then
    local state = redis.call('HGET', KEYS[4], id)
    local priority, attempts = string.match(state, '^([^:]*):([^:]*):')
    attempts = tonumber(attempts) - tonumber(ARGV[2])
    redis.call('HSET', KEYS[4], id, priority .. ':' .. attempts .. ':')
    if visible_at > 0 then
      redis.call('ZADD', KEYS[2], visible_at, id)
    else
      redis.call('ZREM', KEYS[2], id)
      back[#back + 1] = {priority, id}
    end
  end
end
push_ready(back, true)
redis.call('PUBLISH', base .. 'notify', '1')
return 1
