-- Corrects a reservation once the real count is known.
-- KEYS: one rate key. ARGV: us to add (negative gives time back).
-- Returns the us until the TAT is back at now (0: the key is gone).
--@include lib_rate

local tat = tonumber(redis.call('GET', KEYS[1]) or now) + tonumber(ARGV[1])
if tat <= now then redis.call('DEL', KEYS[1]) return 0 end
set_tat(KEYS[1], tat)
return tat - now
