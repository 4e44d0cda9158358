-- Creates jobs: each one's record, first event, queue entries and task message
-- (JobStore.create). Several creates in one call (lib.lua's each).
-- Per create: KEYS: job, events, queued zset, owner index, idempotency key
--   ("" = none), task list, the broker's unacked hash and its index ("" = no
--   task), the API keys' generation counter ("" = no check).
-- ARGV: ttl (0 = none), job id, now ms, idempotency value, idempotency ttl, task message,
--   its delivery tag, its unacked entry, now (seconds), the generation the
--   caller's key was checked at, field/value pairs.
-- Returns, per create: 0 (nothing written) if the generation moved, else the
-- idempotency key's earlier value, else false.
--@include lib

local function create(KEYS, ARGV)
  if KEYS[9] ~= '' and (redis.call('GET', KEYS[9]) or '') ~= ARGV[10] then
    return 0
  end
  if KEYS[5] ~= '' then
    local prior = redis.call('GET', KEYS[5])
    if prior then return prior end
    redis.call('SET', KEYS[5], ARGV[4], 'EX', ARGV[5])
  end
  local fields = {}
  for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
  redis.call('XADD', KEYS[2], '0-1', 'e', 'status', 'd', '{"status":"queued"}')
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
  if tonumber(ARGV[1]) > 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[1])
    redis.call('EXPIRE', KEYS[2], ARGV[1])
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[3] - ARGV[1] * 1000)
    redis.call('EXPIRE', KEYS[4], ARGV[1])
  end
  if KEYS[6] ~= '' then
    push_task(KEYS[6], KEYS[7], KEYS[8], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
  end
  return false
end

return each(create, 9, false)
