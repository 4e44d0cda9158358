-- Runs starting jobs: take each one's lease and mark it running
-- (JobStore.start). Several starts in one call (lib.lua's each).
-- Per start: KEYS: job, events, interactive queued zset, lease, running zset,
--   the job's channel, bulk queued zset, the broker's unacked hash and its
--   index ("" = none).
-- ARGV: job id, run token, lease ms, now, delivery tag.
-- Returns, per start, false for no job, else {transition result, the record's
-- HGETALL}. TOTALS (filled in per catalog by the loader) maps
-- hex("<provider>\n<model>") to the model's total timeout, so the deadline is
-- stored with the start.
--@include lib
--@include lib_transition

local TOTALS = {{TOTALS}}
local function start(KEYS, ARGV)
  if KEYS[8] ~= '' then
    redis.call('HDEL', KEYS[8], ARGV[5])
    redis.call('ZREM', KEYS[9], ARGV[5])
  end
  local priority = redis.call('HGET', KEYS[1], 'priority')
  if not priority then return false end
  local queued = KEYS[3]
  if priority == 'bulk' then queued = KEYS[7] end
  local data = '{"status":"running"}'
  local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0') or 0
  if attempts > 0 then
    data = '{"status":"running","reset":true}'  -- an earlier run may have relayed text
  end
  local job = redis.call('HMGET', KEYS[1], 'provider', 'model', 'started_at')
  local name = (job[1] or '') .. '\n' .. (job[2] or '')
  local hex = name:gsub('.', function(c) return string.format('%02x', c:byte()) end)
  local deadline = tonumber(ARGV[4]) + (TOTALS[hex] or 0)
  local fields = {'status', 'running', 'deadline_at', tostring(deadline),
                  'attempts', tostring(attempts + 1)}
  if not job[3] or job[3] == '' then
    fields[#fields + 1] = 'started_at'
    fields[#fields + 1] = ARGV[4]
  end
  local A = {'0', 'queued,running', ARGV[1], 'take', ARGV[2], ARGV[3], #fields / 2}
  for _, v in ipairs(fields) do A[#A + 1] = v end
  for _, v in ipairs({'1', 'status', data}) do A[#A + 1] = v end
  local K = {KEYS[1], KEYS[2], queued, KEYS[4], KEYS[5], KEYS[6]}
  return {transition(K, A), redis.call('HGETALL', KEYS[1])}
end

return each(start, 9, true)
