-- Running jobs whose lease has lapsed (their worker is gone).
-- KEYS: running zset. ARGV: none.
-- Returns up to 100 job ids whose lease expiry has passed.
--@include lib

return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, 100)
