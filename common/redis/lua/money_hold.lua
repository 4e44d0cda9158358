-- Takes a metered request's hold from its key's money (common/accounts/billing.py):
-- today's free allowance first (granted anew on a new day), then the balance.
-- The key's money is a hash: settled (the database's balance), held (what open
-- holds took from it), daily_free, free_left, free_day. Amounts are integer
-- micro-units; a number above 2^53 compares approximately, which only ever
-- concerns balances far beyond any one hold.
-- KEYS: the key's money hash, the open holds hash, the key's money generation.
-- ARGV: job id, need (input and one unit out), worst case, today, now (s), the
--   generation the caller read before its database read, then (when loading)
--   settled, daily_free, free_left, free_day from the database, else "", and
--   last the key's id (kept with the hold).
-- Returns {-1, generation} when the hash must be loaded (again), {0, settled,
-- held} when refused, else {1, settled, held, from free, from balance, granted}.

if redis.call('EXISTS', KEYS[1]) == 0 then
  local generation = redis.call('GET', KEYS[3]) or '0'
  if ARGV[7] == '' or generation ~= ARGV[6] then return {-1, generation} end
  redis.call('HSET', KEYS[1], 'settled', ARGV[7], 'held', '0',
             'daily_free', ARGV[8], 'free_left', ARGV[9], 'free_day', ARGV[10])
end
local m = redis.call('HMGET', KEYS[1], 'settled', 'held', 'daily_free',
                     'free_left', 'free_day')
local daily = tonumber(m[3]) or 0
local free = tonumber(m[4]) or 0
local granted = '0'
if daily <= 0 then
  free = 0
elseif m[5] ~= ARGV[4] then
  free, granted = daily, '1'
end
local balance = tonumber(m[1]) - tonumber(m[2])
if free + balance < tonumber(ARGV[2]) then return {0, m[1], m[2]} end
local hold = math.min(tonumber(ARGV[3]), free + balance)
local from_free = math.min(hold, free)
local from_balance = hold - from_free
local function int(x) return string.format('%.0f', x) end
redis.call('HSET', KEYS[1], 'free_left', int(free - from_free), 'free_day', ARGV[4])
local held = redis.call('HINCRBY', KEYS[1], 'held', int(from_balance))
redis.call('HSET', KEYS[2], ARGV[1], table.concat(
  {ARGV[11], int(from_free), int(from_balance), ARGV[4], granted, ARGV[5]}, ' '))
return {1, m[1], tostring(held), int(from_free), int(from_balance), granted}
