-- Takes finished jobs to write to the database (common/jobs/retention.py): the
-- due members of the unwritten-history zset, each pushed back by the claim's
-- life so that no other writer takes it meanwhile, and a writer that dies
-- before confirming leaves it to the next one.
-- KEYS: the unwritten-history zset.
-- ARGV: most to take, the claim's life (ms).
-- Returns the job ids taken.
--@include lib

local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), id)
end
return ids
