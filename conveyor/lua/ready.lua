-- Ready messages: a list of ids per priority, 'P:{q}:ready:<priority>', next first, and KEYS[1]
-- the set of priorities that have one (score: the priority). Popping from the lowest gives
-- exact priority, FIFO within it, at a few bytes per message (a sorted set costs ~100).
-- uses: base variadic
local function ready_list(priority)
  return base .. 'ready:' .. priority
end

-- Entries {priority, id}, in order; at_head: before the messages already ready (a message
-- taken and given back), else after them.
local function push_ready(entries, at_head)
  local groups, order = {}, {}
  for _, entry in ipairs(entries) do
    local priority = entry[1]
    if not groups[priority] then
      groups[priority] = {}
      order[#order + 1] = priority
    end
    local ids = groups[priority]
    ids[#ids + 1] = entry[2]
  end
  for _, priority in ipairs(order) do
    local ids = groups[priority]
    if at_head then
      -- LPUSH puts each before the last: reversed, they keep their order at the head
      local reversed = {}
      for j = #ids, 1, -1 do reversed[#reversed + 1] = ids[j] end
      variadic('LPUSH', ready_list(priority), reversed)
    else
      variadic('RPUSH', ready_list(priority), ids)
    end
    redis.call('ZADD', KEYS[1], priority, priority)
  end
end

-- Up to `limit` ready ids, best priority first, and the priority of each.
local function pop_ready(limit)
  local ids, priorities = {}, {}
  while #ids < limit do
    local priority = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
    if not priority then break end
    local wanted = limit - #ids
    local popped = redis.call('LPOP', ready_list(priority), wanted) or {}
    for _, id in ipairs(popped) do
      ids[#ids + 1] = id
      priorities[#priorities + 1] = priority
    end
    if #popped < wanted then redis.call('ZREM', KEYS[1], priority) end  -- its list is gone
  end
  return ids, priorities
end
