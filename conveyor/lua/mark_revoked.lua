-- KEYS: the "some revocation is live" marker; ARGV: ms the new revocation lives. Keeps the longest.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return 1
