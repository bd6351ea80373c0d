-- KEYS: priorities, waiting, msgs, state. Deletes messages nobody holds a lease on.
-- uses: variadic ready
local removed = 0
for _, priority in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local ids = redis.call('LRANGE', ready_list(priority), 0, -1)
  if #ids > 0 then
    variadic('HDEL', KEYS[3], ids)
    variadic('HDEL', KEYS[4], ids)
  end
  redis.call('DEL', ready_list(priority))
  removed = removed + #ids
end
redis.call('DEL', KEYS[1])
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local state = redis.call('HGET', KEYS[4], id)
  if state == nil or state == false or string.match(state, ':$') then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    removed = removed + 1
  end
end
return removed
