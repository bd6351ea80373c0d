-- KEYS: priorities, waiting, msgs, state, seq, dead; ARGV: limit, channel. Oldest dead letters
-- (the list's tail: each is a body under its info entry) become new ready messages, priority 0.
-- uses: variadic ready
local bodies, ready = {}, {}
for _ = 1, tonumber(ARGV[1]) do
  local body = redis.call('RPOP', KEYS[6])
  if not body then break end
  redis.call('RPOP', KEYS[6])
  local id = redis.call('INCR', KEYS[5])
  bodies[#bodies + 1] = id
  bodies[#bodies + 1] = body
  ready[#ready + 1] = {0, id}
end
if #bodies > 0 then
  variadic('HSET', KEYS[3], bodies)
  push_ready(ready, false)
  redis.call('PUBLISH', ARGV[2], '1')
end
return #ready
