-- Ends a job's open hold on its key's money, once: the balance's part leaves
-- ``held``, what the job cost leaves ``settled`` (as the database's settlement
-- did), and the allowance's unspent part returns if it is still that day.
-- KEYS: the key's money hash, the open holds hash.
-- ARGV: job id, minus the cost charged to the balance, allowance given back,
--   the hold's day (integers as decimal text).
-- Returns 1 if the hold was open, 0 if it had been ended already.

local entry = redis.call('HGET', KEYS[2], ARGV[1])
if not entry then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  local from_balance = string.match(entry, '^%S+ %S+ (%S+)')
  if from_balance ~= '0' then
    redis.call('HINCRBY', KEYS[1], 'held', '-' .. from_balance)
  end
  redis.call('HINCRBY', KEYS[1], 'settled', ARGV[2])
  if redis.call('HGET', KEYS[1], 'free_day') == ARGV[4] then
    redis.call('HINCRBY', KEYS[1], 'free_left', ARGV[3])
  end
end
return 1
