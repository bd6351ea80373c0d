-- The queue's key prefix, 'P:{q}:', from KEYS[1] ('P:{q}:priorities'): the queue's other keys
-- share its hash tag, so one script touches one cluster slot.
local base = string.match(KEYS[1], '^(.*:)priorities$')
