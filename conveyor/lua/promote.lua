-- Moves due waiting entries back to ready. Shared head of FETCH. A lapsed lease (its state still
-- names a token) goes back to the head of its priority: it was taken before what is behind it;
-- a delay that came due goes to the tail, after what was ready before it.
-- uses: ready
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
  local lapsed, came_due = {}, {}
  for _, id in ipairs(due) do
    local state = redis.call('HGET', KEYS[4], id)
    redis.call('ZREM', KEYS[2], id)
    if state and redis.call('HEXISTS', KEYS[3], id) == 1 then
      local priority, attempts, token = string.match(state, '^([^:]*):([^:]*):(.*)$')
      redis.call('HSET', KEYS[4], id, priority .. ':' .. attempts .. ':')
      if token == '' then
        came_due[#came_due + 1] = {priority, id}
      else
        lapsed[#lapsed + 1] = {priority, id}
      end
    end
  end
  push_ready(lapsed, true)
  push_ready(came_due, false)
end
