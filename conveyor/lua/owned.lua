-- Fencing helper: the lease token of an id, or nil.
local function lease_of(id)
  local state = redis.call('HGET', KEYS[4], id)
  if not state then return nil end
  return string.match(state, '^[^:]*:[^:]*:(.*)$')
end
