-- What the rate scripts share (common/limits.py), pulled in by their
-- "@include lib_rate" line; it defines no KEYS, ARGV or return of its own.
-- now: Redis's clock in whole microseconds. set_tat(key, tat): writes a
-- theoretical arrival time. A TAT in us (~1.8e15) is exact in Lua's doubles, but
-- Lua would hand it to Redis as text with 14 significant digits, hence '%.0f';
-- its expiry is whole ms, a second past the TAT.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function set_tat(key, tat)
  redis.call('SET', key, string.format('%.0f', tat),
             'PX', math.floor((tat - now) / 1000) + 1000)
end
