-- fill.lua: store the loaded value, only if the caller's lease is still in the key
-- (docs/cache-protocol.md).
--
-- KEYS[1]  the cache key
-- ARGV[1]  the caller's lease marker, exactly as passed to acquire.lua
-- ARGV[2]  the value to store (the row, or the negative-cache marker "\0df:none")
-- ARGV[3]  the value's TTL in milliseconds; "0" stores it without a TTL
--
-- Returns 1 when stored; 0 when refused: the key was deleted by an invalidation after the lease
-- was taken (the loaded value may predate the commit that caused it), or the lease expired and
-- the key is now absent or holds another caller's lease or value.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] == '0' then
  -- a plain SET also drops the lease's expiry: the value lives until the next invalidation
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
