-- Any number of tasks in one call (one per call on a cluster: their keys are in different slots).
-- KEYS: (task, history, done) per task; ARGV: (state, meta, ttl_ms (0: none), ready (0/1), n, n entries) per task
local a = 1
for k = 1, #KEYS, 3 do
  local task, history, done = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local meta, ttl, entries = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 4])
  local previous = redis.call('HGET', task, 'state')
  local ready = ARGV[a + 3] == '1'
  if previous ~= 'SUCCESS' then
    redis.call('HSET', task, 'state', ARGV[a], 'meta', meta)
    if ready then
      -- waiters get the ready meta itself: no read after they wake
      if previous then redis.call('DEL', done) end  -- an earlier run may have left its own
      redis.call('RPUSH', done, meta)
    end
  end
  if previous then
    -- A batch retried after a lost reply must not record its history twice.
    local recent = {}
    for _, entry in ipairs(redis.call('LRANGE', history, -32, -1)) do recent[entry] = true end
    for i = a + 5, a + 4 + entries do
      if not recent[ARGV[i]] then redis.call('RPUSH', history, ARGV[i]) end
    end
  elseif entries > 0 then
    -- A first write (task and history are written and expire together): nothing to repeat.
    redis.call('RPUSH', history, unpack(ARGV, a + 5, a + 4 + entries))
  end
  if ttl > 0 then
    redis.call('PEXPIRE', task, ttl)
    redis.call('PEXPIRE', history, ttl)
    if ready then redis.call('PEXPIRE', done, ttl) end
  end
  a = a + 5 + entries
end
return 1
