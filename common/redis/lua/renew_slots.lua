-- Renews a holder's concurrency slots where it holds them.
-- KEYS: slot sets. ARGV: holder, hold ms.
-- Returns 1.
--@include lib

local now = now_ms()
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2]) * 2)
end
return 1
