-- Reserves a request on every rate limit at once (provider and model limits):
-- the request goes when the slowest limit allows, and every TAT moves on.
-- KEYS: rate keys. ARGV: per key, its cost (us) and tolerance (us).
-- Returns the us to wait before going.
--@include lib_rate

local start = now
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local ready = tat - tonumber(ARGV[i * 2])
  if ready > start then start = ready end
end
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < start then tat = start end
  set_tat(KEYS[i], tat + tonumber(ARGV[i * 2 - 1]))
end
return start - now
