-- What several scripts share, pulled in by their "@include lib" line; it
-- defines no KEYS, ARGV or return of its own.
--
-- now_ms(): Redis's clock in whole milliseconds.
-- push_task(...): a job's task message pushed on its broker list, with the entry
--   kombu's Redis QoS would write into its unacked set on delivery
--   (workers/broker/transport.py).
-- notice(...) / flush_notices(): what is for a submitter's process channel is
--   gathered, then published at the end of the script: one message per channel
--   for all of the script's jobs, a "<job id> <count>" line before each job's
--   event lines, so a web process relaying many streams reads one message per
--   delta write, not one per job. Every script that appends events flushes.
-- set_fields(...), add_events(...): set a record's fields, append its events.
-- each(fn, n, notices): fn(K, A) applied to several calls in one script. KEYS:
--   each call's n keys in turn; ARGV: per call, its argument count and then its
--   arguments. Returns the list of results; with notices, flushes them at the end.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function push_task(list, unacked, index, message, tag, entry, at)
  redis.call('LPUSH', list, message)
  redis.call('HSET', unacked, tag, entry)
  redis.call('ZADD', index, at, tag)
end

local notices, noticed = {}, {}
local function notice(channel, job, count, message)
  local box = notices[channel]
  if not box then
    box = {}
    notices[channel] = box
    noticed[#noticed + 1] = channel
  end
  box[#box + 1] = job .. ' ' .. count .. '\n' .. message
end
local function flush_notices()
  for _, channel in ipairs(noticed) do
    redis.call('PUBLISH', channel, table.concat(notices[channel], '\n'))
  end
  notices, noticed = {}, {}
end

-- Sets the field/value pairs in A from A[i] (their count, then the pairs) on
-- the record. Returns the index after them.
local function set_fields(record, A, i)
  local nfields = tonumber(A[i])
  if nfields > 0 then
    redis.call('HSET', record, unpack(A, i + 1, i + nfields * 2))
  end
  return i + 1 + nfields * 2
end

-- Adds the events in A from A[i] (their count, then type/data pairs) to the
-- stream, publishes them on the job's channel (one message, one
-- "<id> <type> <data>" line per event: compact JSON holds no newline) and
-- notices its submitter (false: none). Returns the id of the last event.
local function add_events(stream, channel, submitter, job_id, A, i)
  local nevents = tonumber(A[i])
  i = i + 1
  local n = redis.call('XLEN', stream)
  local lines = {}
  for j = 1, nevents do
    n = n + 1
    redis.call('XADD', stream, '0-' .. n, 'e', A[i], 'd', A[i + 1])
    lines[j] = n .. ' ' .. A[i] .. ' ' .. A[i + 1]
    i = i + 2
  end
  if nevents > 0 then
    local message = table.concat(lines, '\n')
    redis.call('PUBLISH', channel, message)
    if submitter then notice(submitter, job_id, nevents, message) end
  end
  return n
end

local function each(fn, n, notices_too)
  local results, a = {}, 1
  for t = 0, #KEYS / n - 1 do
    local count = tonumber(ARGV[a])
    results[t + 1] = fn({unpack(KEYS, t * n + 1, t * n + n)},
                        {unpack(ARGV, a + 1, a + count)})
    a = a + count + 1
  end
  if notices_too then flush_notices() end
  return results
end
