-- Transitions of different jobs in one call, applied in order (lib.lua's each).
-- Per transition: KEYS and ARGV as lib_transition.lua's K and A.
-- Returns, per transition, what transition returns.
--@include lib
--@include lib_transition

return each(transition, 7, true)
