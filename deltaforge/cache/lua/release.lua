-- release.lua: give a lease back without filling (docs/cache-protocol.md), e.g. when the loader
-- failed or found no row, so that waiting readers need not wait for the lease to expire.
--
-- KEYS[1]  the cache key
-- ARGV[1]  the caller's lease marker, exactly as passed to acquire.lua
--
-- Returns 1 when the key held ARGV[1] and was deleted; 0 when it held anything else (or nothing),
-- which is left untouched.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
