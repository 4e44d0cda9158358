-- transition(K, A): one status change of a job, with its lease checked: the one
-- place the lease is enforced for writes. Pulled in by a script's "@include
-- lib_transition" line, after lib.
--
-- K: job, events, queued zset, lease, running zset, the job's channel, and
--    optionally the unwritten-history zset, which a job entering a terminal
--    status joins (common/jobs/retention.py writes it to the database)
-- A: ttl (0 = keep), expected statuses "a,b" ("" = any), job id, lease op
--    ("" | take | hold | drop | orphan), run token, lease ms, field count,
--    pairs..., event count, (type, data) pairs...
-- Lease ops: take = own the lease unless another run holds it; hold = apply only
-- while owning it; drop = like hold, then release it; orphan = apply only while
-- nobody holds it (its worker died), and forget it was running.
-- Returns {applied 0/1, status, last event id, cancel flag, lease lost 0/1}.
-- The events are published on the job's channel and, if the record names one
-- (field notify), noticed for its submitter's process channel (lib.lua).

local function transition(K, A)
  local status = redis.call('HGET', K[1], 'status')
  if not status then return {0, '', 0, '', 0} end
  local function refuse(lost)
    return {0, status, redis.call('XLEN', K[2]),
            redis.call('HGET', K[1], 'cancel') or '', lost}
  end
  if A[2] ~= '' then
    local ok = false
    for s in string.gmatch(A[2], '[^,]+') do
      if s == status then ok = true end
    end
    if not ok then return refuse(0) end
  end
  local op, token = A[4], A[5]
  if op ~= '' then
    local holder = redis.call('GET', K[4])
    if op == 'take' then
      if holder and holder ~= token then return refuse(1) end
      redis.call('SET', K[4], token, 'PX', A[6])
      redis.call('ZADD', K[5], now_ms() + tonumber(A[6]), A[3])
    elseif op == 'orphan' then
      if holder then return refuse(1) end
      redis.call('ZREM', K[5], A[3])
    elseif holder ~= token then
      return refuse(1)
    elseif op == 'drop' then
      redis.call('DEL', K[4])
      redis.call('ZREM', K[5], A[3])
    end
  end
  local i = set_fields(K[1], A, 7)
  -- Followers are woken through pub/sub; the stream stays the record. The web
  -- process that submitted the job to follow it hears it on its own channel.
  local submitter = tonumber(A[i]) > 0 and redis.call('HGET', K[1], 'notify')
  local n = add_events(K[2], K[6], submitter, A[3], A, i)
  status = redis.call('HGET', K[1], 'status')
  if status == 'queued' then
    local t = redis.call('TIME')
    redis.call('ZADD', K[3], 'NX', tonumber(t[1]) * 1000, A[3])
  else
    redis.call('ZREM', K[3], A[3])
  end
  if K[7] and (status == 'succeeded' or status == 'failed'
               or status == 'cancelled') then
    redis.call('ZADD', K[7], 'NX', now_ms(), A[3])
  end
  if tonumber(A[1]) > 0 then
    redis.call('EXPIRE', K[1], A[1])
    redis.call('EXPIRE', K[2], A[1])
  end
  return {1, status, n, redis.call('HGET', K[1], 'cancel') or '', 0}
end
