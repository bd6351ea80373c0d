-- KEYS: priorities; ARGV: limit (0: all). Returns {priority, length, head id, ...} for the best
-- priorities, until they hold `limit` messages: what a fetch would take, without taking it.
-- uses: ready
local limit, out, seen = tonumber(ARGV[1]), {}, 0
for _, priority in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if limit > 0 and seen >= limit then break end
  local list = ready_list(priority)
  local length = redis.call('LLEN', list)
  if length > 0 then
    out[#out + 1] = tonumber(priority)
    out[#out + 1] = length
    out[#out + 1] = tonumber(redis.call('LINDEX', list, 0))
    seen = seen + length
  end
end
return out
