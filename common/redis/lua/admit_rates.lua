-- Admits a request only if every rate limit has room in its window (a key's
-- limits at the front door); a denied request uses up nothing.
-- KEYS: rate keys. ARGV: per key, its cost (us) and window (us).
-- Returns {admitted 0/1, wait us, then per key: us until its TAT is back at now}.
--@include lib_rate

local wait, tats = 0, {}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new = tat + tonumber(ARGV[i * 2 - 1])
  local over = new - now - tonumber(ARGV[i * 2])
  if over > wait then wait = over end
  tats[i] = new
end
local out = {wait > 0 and 0 or 1, wait}
for i = 1, #KEYS do
  if wait <= 0 then
    set_tat(KEYS[i], tats[i])
    out[#out + 1] = tats[i] - now
  else
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    out[#out + 1] = math.max(0, tat - now)
  end
end
return out
