-- KEYS: namespace hash; ARGV: key, expected ('' flag in ARGV[3]), new, has_expected, has_new
local current = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[4] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) else redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
