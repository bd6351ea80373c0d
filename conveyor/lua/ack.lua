-- KEYS: priorities, waiting, msgs, state; ARGV: (id, token)...
-- uses: variadic
local ids = {}
for i = 1, #ARGV, 2 do ids[#ids + 1] = ARGV[i] end
local states = variadic('HMGET', KEYS[4], ids)
local owned = {}
for j, id in ipairs(ids) do
  local state = states[j]
  if state and string.match(state, '^[^:]*:[^:]*:(.*)$') == ARGV[2 * j] then owned[#owned + 1] = id end
end
if #owned > 0 then
  variadic('ZREM', KEYS[2], owned)
  variadic('HDEL', KEYS[3], owned)
  variadic('HDEL', KEYS[4], owned)
end
return 1
