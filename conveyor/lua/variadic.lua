-- Scripts make one variadic call per structure for a whole batch, not one call per message:
-- a call costs the server more than an item. unpack() is bounded by Lua's C stack (8000),
-- so the calls go in chunks of 4000 items (even: HSET and ZADD take pairs).
local function variadic(command, key, items)
  local out = {}
  for j = 1, #items, 4000 do
    local reply = redis.call(command, key, unpack(items, j, math.min(j + 3999, #items)))
    if type(reply) == 'table' then
      for k = 1, #reply do out[#out + 1] = reply[k] end
    end
  end
  return out
end
