-- KEYS: priorities, waiting, msgs, state, seq[, revocations marker: not on a cluster];
-- ARGV: now (ms), the notify channel, the largest body handed over (bytes), then (priority, due ms,
-- body) per message. The batch's ids are reserved with one INCRBY. Registered waiters are handed the
-- batch's best due messages, one each: "d" .. not_revoked (0/1) .. "id:attempts:token:" .. body in
-- their inbox. A larger body is never sent over pub/sub, whose client output buffer limit would
-- cut the waiter's connection: it goes to the ready queue, and the waiters are notified.
-- uses: variadic ready waiters
local now = tonumber(ARGV[1])
local largest = tonumber(ARGV[3])
local count = (#ARGV - 3) / 3
local id = redis.call('INCRBY', KEYS[5], count) - count
local bodies, due_now, delayed, states, large = {}, {}, {}, {}, {}
for i = 4, #ARGV, 3 do
  id = id + 1
  local priority = ARGV[i]
  bodies[#bodies + 1] = id
  bodies[#bodies + 1] = ARGV[i + 2]
  local due = tonumber(ARGV[i + 1])
  if due > now then
    delayed[#delayed + 1] = due
    delayed[#delayed + 1] = id
    states[#states + 1] = id
    states[#states + 1] = priority .. ':0:'
  elseif #ARGV[i + 2] > largest then
    large[#large + 1] = {priority, id}
  else
    due_now[#due_now + 1] = {priority, id, ARGV[i + 2]}
  end
end
local waiters = #due_now > 0 and live_waiters() or {}
local handed, leases = math.min(#waiters, #due_now), {}
if handed > 0 then
  -- the batch's best go to the waiters: priority holds as if they had claimed them
  if handed < #due_now then
    table.sort(due_now, function(a, b)
      local pa, pb = tonumber(a[1]), tonumber(b[1])
      return pa < pb or (pa == pb and a[2] < b[2])
    end)
  end
  local not_revoked = '0'
  if KEYS[6] and redis.call('EXISTS', KEYS[6]) == 0 then not_revoked = '1' end
  for j = 1, handed do
    local member, entry = waiters[j], due_now[j]
    local token, lease_ms = string.match(member, '^[^:]*:([^:]*):([^:]*)$')
    states[#states + 1] = entry[2]
    states[#states + 1] = entry[1] .. ':1:' .. token
    leases[#leases + 1] = now + tonumber(lease_ms)
    leases[#leases + 1] = entry[2]
    redis.call('ZREM', base .. 'waiters', member)
    hand(member, 'd' .. not_revoked .. entry[2] .. ':1:' .. token .. ':' .. entry[3])
  end
end
local ready = {}
for j = handed + 1, #due_now do ready[#ready + 1] = due_now[j] end
for j = 1, #large do ready[#ready + 1] = large[j] end
-- ids grow in publish order: the large ones take their place in it
if #large > 0 then table.sort(ready, function(a, b) return a[2] < b[2] end) end
variadic('HSET', KEYS[3], bodies)
push_ready(ready, false)
variadic('ZADD', KEYS[2], delayed)
variadic('ZADD', KEYS[2], leases)
variadic('HSET', KEYS[4], states)
-- What was not handed over wakes the queue's idle consumers (a delayed message: to wait for it).
if #ready > 0 or #delayed > 0 then redis.call('PUBLISH', ARGV[2], '1') end
return #ready + handed
