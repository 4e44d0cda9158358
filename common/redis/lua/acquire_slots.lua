-- Takes a concurrency slot in every set, or none; a holder's slot lapses at its
-- score unless renewed, so a dead worker's slots free themselves.
-- KEYS: slot sets. ARGV: holder, hold ms, then one limit per key.
-- Returns 1 if taken, 0 if any set is full.
--@include lib

local now = now_ms()
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if not redis.call('ZSCORE', KEYS[i], ARGV[1])
     and redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[i + 2]) then
    return 0
  end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2]) * 2)
end
return 1
