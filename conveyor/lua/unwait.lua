-- KEYS: priorities; ARGV: waiter. Ends that registration; returns the consumer's inbox list
-- (the message handed to it, if one was; older entries, already taken by pub/sub, are stale).
-- uses: waiters
redis.call('ZREM', base .. 'waiters', ARGV[1])
local inbox = base .. 'inbox:' .. string.match(ARGV[1], '^([^:]*)')
local items = redis.call('LRANGE', inbox, 0, -1)
redis.call('DEL', inbox)
return items
