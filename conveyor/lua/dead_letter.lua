-- KEYS: priorities, waiting, msgs, state, dead; ARGV: id, token, entry
-- uses: owned
if lease_of(ARGV[1]) ~= ARGV[2] then return 0 end
local body = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('LPUSH', KEYS[5], body, cjson.encode({queue = ARGV[4], reason = ARGV[3], at = tonumber(ARGV[5])}))
redis.call('LTRIM', KEYS[5], 0, 19999)
return 1
