-- A transition that also pushes the job's task message, as create does: a job
-- moved back to queued is never without the task that runs it.
-- KEYS: the transition's seven (lib_transition.lua), then the task list, the
--   broker's unacked hash and its index.
-- ARGV: the message, its delivery tag, its unacked entry, now (seconds), then
--   the transition's arguments.
-- Returns what transition returns.
--@include lib
--@include lib_transition

local result = transition({unpack(KEYS, 1, 7)}, {unpack(ARGV, 5)})
if result[1] == 1 then
  push_task(KEYS[8], KEYS[9], KEYS[10], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
end
flush_notices()
return result
