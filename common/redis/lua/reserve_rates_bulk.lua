-- Reserves a batch request on every rate limit at once, but only if it can go
-- now without pushing any limit's TAT more than its lead past now: bulk work
-- takes the capacity interactive calls leave, and never queues ahead of them
-- (common/limits.py, common/batches/dispatcher.py).
-- KEYS: rate keys. ARGV: per key, its cost (us) and lead (us).
-- Returns 0 when reserved, else the us until it could be.
--@include lib_rate

local wait = 0
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local cost = tonumber(ARGV[i * 2 - 1])
  local lead = math.max(tonumber(ARGV[i * 2]), cost)
  local over = tat + cost - now - lead
  if over > wait then wait = over end
end
if wait > 0 then return wait end
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  set_tat(KEYS[i], tat + tonumber(ARGV[i * 2 - 1]))
end
return 0
