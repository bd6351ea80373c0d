-- KEYS: priorities, waiting, msgs, state; ARGV: until_ms, (id, token)...  Returns lost ids.
-- uses: owned
local lost = {}
for i = 2, #ARGV, 2 do
  if lease_of(ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', KEYS[2], 'XX', ARGV[1], ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
