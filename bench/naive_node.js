// The straightforward loop a Node user writes today: the Node peer of `deltaforge bench`.
//
//   @vlasky/zongji (binlog) -> JSON.stringify({table, op, before, after, ts_ms}) per row
//   -> ioredis pipeline XADD <stream> * df-event <json>, flushed every 100 events.
//
// No processor, no checkpoint, no exactly-once (like bench/naive.py).
//
//   node bench/naive_node.js --mysql-dsn mysql://u:p@127.0.0.1:3306/ --redis-uri redis://127.0.0.1:6379/0 \
//       --start binlog.000001:1234 --tables app.users,app.orders --count 100000 --stream naive:node
//
// Every flag may instead come from the environment: MYSQL_DSN, REDIS_URI, START, TABLES, COUNT, STREAM,
// SERVER_ID. Stops after COUNT row events, flushes, prints one JSON line:
//   {"events": N, "seconds": S, "events_per_s": R}
// The clock runs from the first row event to the last flush (the same span bench/naive.py measures).
// Dependencies live in bench/node (npm install there); run from anywhere.
'use strict';

const path = require('path');
const { createRequire } = require('module');
const { pathToFileURL } = require('url');

const req = createRequire(path.join(__dirname, 'node', 'package.json'));

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const eq = a.indexOf('=');
    if (eq > 0) out[a.slice(2, eq)] = a.slice(eq + 1);
    else out[a.slice(2)] = argv[++i];
  }
  return out;
}

function fail(msg) {
  process.stderr.write(`naive_node: ${msg}\n`);
  process.exit(2);
}

const args = parseArgs(process.argv.slice(2));
const opt = (name, env, dflt) => args[name] ?? process.env[env] ?? dflt;
const mysqlDsn = opt('mysql-dsn', 'MYSQL_DSN');
const redisUri = opt('redis-uri', 'REDIS_URI');
const start = opt('start', 'START');
const tables = opt('tables', 'TABLES');
const count = Number(opt('count', 'COUNT'));
const stream = opt('stream', 'STREAM', 'naive:node');
// A replica id of its own: two dump threads with one server id kick each other off.
const serverId = Number(opt('server-id', 'SERVER_ID', 992));
if (!mysqlDsn || !redisUri || !start || !tables || !(count > 0)) {
  fail('need --mysql-dsn, --redis-uri, --start file:pos, --tables db.t,... and --count N (or the env vars)');
}

const url = new URL(mysqlDsn);
const colon = start.lastIndexOf(':');
const filename = start.slice(0, colon);
const position = Number(start.slice(colon + 1));
const includeSchema = {};
for (const t of tables.split(',')) {
  const [db, table] = t.split('.');
  (includeSchema[db] = includeSchema[db] || []).push(table);
}

const OPS = { writerows: 'c', updaterows: 'u', deleterows: 'd' };
const bigintSafe = (_k, v) => (typeof v === 'bigint' ? v.toString() : v);
function stringify(obj) {
  try {
    return JSON.stringify(obj);
  } catch (e) {
    // BIGINT values beyond 2^53 come back as BigInt, which JSON.stringify refuses.
    return JSON.stringify(obj, bigintSafe);
  }
}

async function main() {
  // @vlasky/zongji 0.9 is an ES module: import() it from this CommonJS script.
  const ZongJi = (await import(pathToFileURL(req.resolve('@vlasky/zongji')).href)).default;
  const Redis = req('ioredis');
  const redis = new Redis(redisUri);
  const zongji = new ZongJi({
    host: url.hostname,
    port: Number(url.port || 3306),
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
  });

  let pipe = redis.pipeline();
  let pending = 0;
  let done = 0;
  let t0 = null;
  let finished = false;
  let lastFlush = Promise.resolve();

  function flush() {
    const p = pipe;
    pipe = redis.pipeline();
    pending = 0;
    // Fire and forget, as a user would: one connection keeps the entries in binlog order,
    // so the last flush resolving means every entry landed.
    lastFlush = p.exec().then((replies) => {
      for (const [err] of replies) if (err) throw err;
    });
    lastFlush.catch(onError);
  }

  async function finish() {
    finished = true;
    zongji.stop();
    if (pending) flush();
    await lastFlush;
    const seconds = (process.hrtime.bigint() - (t0 ?? process.hrtime.bigint())) / 1000n;
    const s = Number(seconds) / 1e6;
    await redis.quit();
    process.stdout.write(JSON.stringify({
      events: done,
      seconds: Math.round(s * 1000) / 1000,
      events_per_s: s > 0 ? Math.round((done / s) * 10) / 10 : 0,
    }) + '\n');
    process.exit(0);
  }

  zongji.on('binlog', (evt) => {
    if (finished) return;
    const op = OPS[evt.getEventName()];
    if (op === undefined) return; // tablemap
    const tm = evt.tableMap[evt.tableId];
    const table = `${tm.parentSchema}.${tm.tableName}`;
    if (t0 === null) t0 = process.hrtime.bigint();
    const ts = evt.timestamp;
    for (const row of evt.rows) {
      const event = op === 'u'
        ? { table, op, before: row.before, after: row.after, ts_ms: ts }
        : { table, op, before: op === 'd' ? row : null, after: op === 'c' ? row : null, ts_ms: ts };
      pipe.xadd(stream, '*', 'df-event', stringify(event));
      done++;
      if (++pending === 100) flush();
      if (done >= count) {
        finish().catch(onError);
        return;
      }
    }
  });

  function onError(err) {
    fail(`${err && err.message ? err.message : err}`);
  }
  zongji.on('error', onError);
  redis.on('error', onError);

  zongji.start({
    serverId,
    filename,
    position,
    includeEvents: ['tablemap', 'writerows', 'updaterows', 'deleterows'],
    includeSchema,
  });
}

main().catch((err) => fail(`${err && err.message ? err.message : err}`));
