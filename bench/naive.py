"""The straightforward loop a Python user writes today: the baseline every DeltaForge figure is compared with.

mysql-replication ``BinLogStreamReader`` -> ``json.dumps(default=str)`` -> redis-py
pipeline XADD every 100 events. No processor, no checkpoint, no exactly-once.

    python bench/naive.py --mysql-dsn mysql://u:p@127.0.0.1:3306/ --redis-uri redis://127.0.0.1:6379/0 \\
        --start binlog.000001:4 --tables app.users,app.orders --count 100000 --stream naive

Prints one JSON line: {"events": N, "seconds": S, "events_per_s": R}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import redis
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from deltaforge.dsn import parse_mysql_dsn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mysql-dsn", required=True)
    ap.add_argument("--redis-uri", required=True)
    ap.add_argument("--start", required=True, help="binlog file:pos")
    ap.add_argument("--tables", required=True, help="comma-separated db.table")
    ap.add_argument("--count", type=int, required=True, help="stop after this many row events")
    ap.add_argument("--stream", default="naive")
    args = ap.parse_args(argv)
    dsn = parse_mysql_dsn(args.mysql_dsn)
    file, pos = args.start.rsplit(":", 1)
    wanted = {tuple(t.split(".", 1)) for t in args.tables.split(",")}
    stream = BinLogStreamReader(
        connection_settings={"host": dsn.host, "port": dsn.port, "user": dsn.user, "passwd": dsn.password},
        server_id=991, blocking=True, resume_stream=True, log_file=file, log_pos=int(pos),
        only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
        only_schemas=sorted({db for db, _ in wanted}),
    )
    r = redis.Redis.from_url(args.redis_uri)
    pipe = r.pipeline(transaction=False)
    pending = 0
    done = 0
    t0 = None
    for ev in stream:
        if (ev.schema, ev.table) not in wanted:
            continue
        if t0 is None:
            t0 = time.perf_counter()
        op = {WriteRowsEvent: "c", UpdateRowsEvent: "u", DeleteRowsEvent: "d"}[type(ev)]
        for row in ev.rows:
            event = {
                "table": f"{ev.schema}.{ev.table}", "op": op, "ts_ms": ev.timestamp * 1000,
                "before": row.get("before_values", row.get("values") if op == "d" else None),
                "after": row.get("after_values", row.get("values") if op == "c" else None),
            }
            pipe.xadd(args.stream, {"df-event": json.dumps(event, default=str)})
            pending += 1
            done += 1
            if pending == 100:
                pipe.execute()
                pending = 0
        if done >= args.count:
            break
    if pending:
        pipe.execute()
    seconds = time.perf_counter() - (t0 or time.perf_counter())
    stream.close()
    print(json.dumps({"events": done, "seconds": round(seconds, 3),
                      "events_per_s": round(done / seconds, 1) if seconds else 0.0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
