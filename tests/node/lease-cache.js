// lease-cache.js: DeltaForge's lease fill protocol (docs/cache-protocol.md) for ioredis.
//
// leaseGet(redis, key, loader, opts) -> {result, value}, result one of:
//   "hit"           the key held a value (value null for the negative marker)
//   "stored"        this call took the lease, loaded and filled the key
//   "refused"       it loaded under a lease, but the lease was revoked (the key was deleted by an
//                   invalidation) or expired: the value is returned, not cached
//   "released"      the loader found nothing (null): the lease was given back
//   "read_through"  another reader held the lease for longer than waitMs: loaded, not cached
//
// The scripts are the Python package's own files (deltaforge/cache/lua/), so both languages run
// byte-identical Lua. Values are strings here (ioredis decodes replies as UTF-8); for binary
// values use the Buffer variants ioredis defines alongside (dfLeaseAcquireBuffer).
//
// As a CLI, for the tests:  node lease-cache.js <redis-uri> <key> <value-to-load> [delay-ms|stdin]
// The loader waits delay-ms (or for one line on stdin), then returns <value-to-load>; one JSON line
// is printed: {"result": ..., "key": ..., "value": ...}. Env LEASE_MS and WAIT_MS override opts.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { performance } = require('perf_hooks');

const LUA_DIR = path.join(__dirname, '..', '..', 'deltaforge', 'cache', 'lua');
const RESERVED_PREFIX = '\x00df:'; // values starting with it are protocol markers, never data
const NEGATIVE_MARKER = '\x00df:none';

function defineLeaseCommands(redis) {
  if (typeof redis.dfLeaseAcquire === 'function') return;
  // defineCommand sends EVALSHA and falls back to EVAL on NOSCRIPT
  for (const [name, file] of [['dfLeaseAcquire', 'acquire.lua'], ['dfLeaseFill', 'fill.lua'],
    ['dfLeaseRelease', 'release.lua']]) {
    redis.defineCommand(name, { numberOfKeys: 1, lua: fs.readFileSync(path.join(LUA_DIR, file), 'utf8') });
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function leaseGet(redis, key, loader, opts = {}) {
  const { leaseMs = 5000, waitMs = 100, pollMs = 5, ttlMs = 0 } = opts;
  defineLeaseCommands(redis);
  const marker = `\x00df:lease:${crypto.randomBytes(16).toString('hex')}`;
  let reply = await redis.dfLeaseAcquire(key, marker, leaseMs);
  const deadline = performance.now() + waitMs;
  while (reply[0] === 'wait' && performance.now() < deadline) {
    await sleep(Math.min(pollMs, deadline - performance.now()));
    reply = await redis.dfLeaseAcquire(key, marker, leaseMs);
  }
  if (reply[0] === 'hit' && reply[1] === NEGATIVE_MARKER) return { result: 'hit', value: null };
  if (reply[0] === 'hit' && !reply[1].startsWith(RESERVED_PREFIX)) return { result: 'hit', value: reply[1] };
  if (reply[0] !== 'lease') {
    // still leased after waitMs (or a marker of a later protocol version): load, store nothing
    return { result: 'read_through', value: await loader() };
  }
  let value;
  try {
    value = await loader(); // only now: the load must start after the lease exists
    if (value != null && String(value).startsWith(RESERVED_PREFIX)) {
      throw new Error(`value for ${key} starts with the reserved prefix \\x00df:`);
    }
  } catch (err) {
    await redis.dfLeaseRelease(key, marker); // waiters need not wait for the lease to expire
    throw err;
  }
  if (value == null) {
    await redis.dfLeaseRelease(key, marker);
    return { result: 'released', value: null };
  }
  const stored = await redis.dfLeaseFill(key, marker, value, ttlMs);
  return { result: stored === 1 ? 'stored' : 'refused', value };
}

function stdinLine() {
  return new Promise((resolve) => {
    let seen = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => {
      seen += chunk;
      if (seen.includes('\n')) {
        process.stdin.destroy();
        resolve();
      }
    });
    process.stdin.on('end', resolve);
  });
}

async function main(argv) {
  const [uri, key, value, delay = '0'] = argv;
  if (!uri || !key || value === undefined) {
    console.error('usage: node lease-cache.js <redis-uri> <key> <value-to-load> [delay-ms|stdin]');
    process.exit(2);
  }
  const Redis = require('ioredis');
  const redis = new Redis(uri);
  try {
    const loader = async () => {
      if (delay === 'stdin') await stdinLine();
      else await sleep(Number(delay));
      return value;
    };
    const opts = {};
    if (process.env.LEASE_MS) opts.leaseMs = Number(process.env.LEASE_MS);
    if (process.env.WAIT_MS) opts.waitMs = Number(process.env.WAIT_MS);
    const { result, value: got } = await leaseGet(redis, key, loader, opts);
    console.log(JSON.stringify({ result, key, value: got }));
  } finally {
    redis.disconnect();
  }
}

module.exports = { leaseGet, defineLeaseCommands, RESERVED_PREFIX, NEGATIVE_MARKER };

if (require.main === module) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
