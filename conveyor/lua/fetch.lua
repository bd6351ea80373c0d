-- KEYS: priorities, waiting, msgs, state; ARGV: now_ms, lease_ms, limit, token[, waiter, waiter_ms]
-- Returns {id, body, attempts, ...} or {next_due_ms} when nothing is ready; then, given a waiter
-- ("consumer:token:lease_ms"), registers it for waiter_ms (in the same call: no publish between).
-- uses: variadic ready promote waiters
local now = tonumber(ARGV[1])
promote(now)
local ids, priorities = pop_ready(tonumber(ARGV[3]))
if #ids == 0 then
  if ARGV[5] then redis.call('ZADD', base .. 'waiters', redis_ms() + tonumber(ARGV[6]), ARGV[5]) end
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {first[2] or false}
end
local previous = variadic('HMGET', KEYS[4], ids)
local bodies = variadic('HMGET', KEYS[3], ids)
local until_ms = now + tonumber(ARGV[2])
local states, leases, out = {}, {}, {}
for j, id in ipairs(ids) do
  local attempts = 1
  if previous[j] then attempts = tonumber(string.match(previous[j], '^[^:]*:([^:]*):')) + 1 end
  states[#states + 1] = id
  states[#states + 1] = priorities[j] .. ':' .. attempts .. ':' .. ARGV[4]
  leases[#leases + 1] = until_ms
  leases[#leases + 1] = id
  out[#out + 1] = id
  out[#out + 1] = bodies[j]
  out[#out + 1] = attempts
end
variadic('HSET', KEYS[4], states)
variadic('ZADD', KEYS[2], leases)
return out
