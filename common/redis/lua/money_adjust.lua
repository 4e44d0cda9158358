-- A credit (or debit) of a key's money, as the live view sees it: a debit is
-- refused if it would take settled minus held below zero. A key whose money
-- is not loaded bumps its generation instead, so a load racing the change
-- reads the database again.
-- KEYS: the key's money hash, the key's money generation.
-- ARGV: amount (micro-units, negative to debit).
-- Returns 1 if applied (or not loaded), 0 if the debit was refused.

if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('INCR', KEYS[2])
  return 1
end
local amount = tonumber(ARGV[1])
if amount < 0 then
  local m = redis.call('HMGET', KEYS[1], 'settled', 'held')
  if tonumber(m[1]) - tonumber(m[2]) + amount < 0 then return 0 end
end
redis.call('HINCRBY', KEYS[1], 'settled', ARGV[1])
return 1
