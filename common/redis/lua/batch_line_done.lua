-- Records one batch request as finished, exactly once: the request leaves the
-- running hash (or, refused before it ran, enters the refused hash) and only
-- then joins the done list and the counts, all in this one step
-- (common/batches/progress.py).
-- A request refused after it was taken (its job could not be created) leaves
-- the running hash too.
-- KEYS: batch state hash, running hash, done list, refused hash.
-- ARGV: request index, count field ("completed" | "failed"), input tokens,
--   output tokens, refused output line ("" = it ran).
-- Returns 1 if recorded now, 0 if it was recorded before (or never ran).

if ARGV[5] ~= '' then
  if redis.call('HSETNX', KEYS[4], ARGV[1], ARGV[5]) == 0 then return 0 end
  redis.call('HDEL', KEYS[2], ARGV[1])
elseif redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[4])
return 1
