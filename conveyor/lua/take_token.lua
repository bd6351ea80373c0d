-- KEYS: bucket; ARGV: now_ms, interval_ms. Returns ms to wait (0: granted).
local now = tonumber(ARGV[1])
local due = tonumber(redis.call('GET', KEYS[1]) or '0')
if due < now then due = now end
if due > now then return due - now end
redis.call('SET', KEYS[1], string.format('%.0f', due + tonumber(ARGV[2])), 'PX', 3600000)
return 0
