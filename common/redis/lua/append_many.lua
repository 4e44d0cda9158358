-- Appends of running jobs (the delta writer's many small writes), each applied
-- as a transition with a "hold" of the run's lease would apply it: an append
-- changes no status, so it leaves the queued set alone and reads the record once
-- (the most frequent write). Several appends in one call (lib.lua's each).
-- Per append: KEYS: job, events, lease, the job's channel.
-- ARGV: job id, lease token, field count, field/value pairs, event count,
--   type/data pairs.
-- Returns, per append, what transition returns.
--@include lib

local function append(K, A)
  local job = redis.call('HMGET', K[1], 'status', 'notify', 'cancel')
  if not job[1] then return {0, '', 0, '', 0} end
  local cancel = job[3] or ''
  if redis.call('GET', K[3]) ~= A[2] then
    return {0, job[1], redis.call('XLEN', K[2]), cancel, 1}
  end
  local i = set_fields(K[1], A, 3)
  return {1, job[1], add_events(K[2], K[4], job[2], A[1], A, i), cancel, 0}
end

return each(append, 4, true)
