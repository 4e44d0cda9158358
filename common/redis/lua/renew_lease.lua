-- Renews a run's lease, if the run still holds it.
-- KEYS: lease, running zset. ARGV: token, lease ms, job id.
-- Returns 1 if renewed, 0 if another run (or none) holds it.
--@include lib

if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]), ARGV[3])
return 1
