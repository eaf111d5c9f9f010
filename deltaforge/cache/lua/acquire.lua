-- acquire.lua: the first step of a lease-cache read (docs/cache-protocol.md).
--
-- KEYS[1]  the cache key
-- ARGV[1]  the caller's lease marker: "\0df:lease:" followed by 32 hex characters (16 random bytes)
-- ARGV[2]  the lease lifetime in milliseconds (a positive integer)
--
-- Returns one of:
--   {"lease"}         the key was absent; it now holds ARGV[1] for ARGV[2] ms. The caller loads
--                     the row (only now: the load must start after the lease exists) and runs fill.lua.
--   {"wait"}          another caller holds a lease on the key: poll, or read through.
--   {"hit", value}    the key holds a value. "\0df:none" is the negative-cache marker (the row
--                     does not exist); the caller maps it to "absent".
--
-- The lease lives in the key itself, so any DEL/UNLINK of the key (the invalidation worker's)
-- revokes it; no script is needed on the invalidation side. Single-key: safe on Redis Cluster.
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'lease'}
end
-- "\000" is NUL (Lua's decimal escape); the prefix is 10 bytes long
if string.sub(value, 1, 10) == '\000df:lease:' then
  return {'wait'}
end
return {'hit', value}
