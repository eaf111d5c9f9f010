"""An idle engine blocks in the kernel: no stage thread polls while there is no traffic.

Counted, not timed: the stage channels count their condition-wait returns and the reader counts
the returns of its idle select. Before these waits blocked, each of the three threads woke every
200 ms (about 15 wake-ups in an idle second and a half); now the only wake-ups are the server's
heartbeats (one every 5 s), the stop itself, and the writer's probe of its Redis connections once
a second (one non-blocking peek per sink: a Redis that rolled back while nothing came is acted on
without waiting for the next change, tests/test_exactly_once.py).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from deltaforge.config import load_config
from deltaforge.runtime.channels import HALTED, AnyStop, Channel, WakeEvent
from deltaforge.runtime.supervisor import Supervisor
from deltaforge.testing import MariaDBServer, RedisServer
from tests.e2e import (
    TAG_PROCESSOR,
    TOPOLOGIES,
    binlog_end,
    start_engine,
    stop_engine,
    wait_for,
    write_config,
)


def test_channel_blocks_until_an_item_or_the_halt() -> None:
    halt = WakeEvent()
    ch = Channel(1, halt)
    got: list[object] = []

    def consume() -> None:
        for _ in range(2):
            got.append(ch.get())

    t = threading.Thread(target=consume)
    t.start()
    assert ch.put("a")
    wait_for(lambda: got == ["a"], 5, "first item")
    assert t.is_alive() and ch.wakeups <= 1  # now parked in a plain condition wait
    time.sleep(0.5)
    assert ch.wakeups <= 1  # nobody polls
    halt.set()
    t.join(5)
    assert got == ["a", HALTED]
    # halt discards nothing: items put before it are still handed out, then HALTED
    assert ch.put("b") and not ch.put("c")  # room for one; full and halted: dropped
    assert ch.get() == "b" and ch.get() is HALTED


def test_anystop_wake_fd_turns_readable_on_any_event() -> None:
    import select

    stop, halt = WakeEvent(), WakeEvent()
    s = AnyStop(stop, halt)
    fd = s.wake_fileno()
    assert fd is not None and select.select([fd], [], [], 0)[0] == []
    halt.set()
    assert select.select([fd], [], [], 0)[0] == [fd] and s.is_set()
    s.close()
    assert s.wake_fileno() is None and not halt._hooks
    assert AnyStop(threading.Event()).wake_fileno() is None  # a plain Event: waiters poll


# in-process only: it counts the wake-ups of this process's stage channels and reader (sup.pipeline)
@pytest.mark.integration
def test_an_idle_engine_does_not_wake_up(tmp_path: Path, mariadb: MariaDBServer, redis_server: RedisServer,
                                         redis_client, fresh_db: str) -> None:
    mariadb.execute(f"CREATE TABLE {fresh_db}.items (id INT PRIMARY KEY)")
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=binlog_end(mariadb))
    sup = Supervisor(load_config(cfg))
    t = threading.Thread(target=sup.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: sup.pipeline is not None and len(sup.pipeline.channels) == 2, what="pipeline start")
        mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES (1)")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 1, what="first event")
        pipe = sup.pipeline
        assert pipe is not None
        time.sleep(0.3)  # let the stages settle into their idle waits
        before = (pipe.source.idle_wakeups, [c.wakeups for c in pipe.channels])
        probes = pipe.channels[1].idle_timeouts
        time.sleep(1.5)
        after = (pipe.source.idle_wakeups, [c.wakeups for c in pipe.channels])
        # the channels never wake while idle; the reader at most once (a heartbeat); the writer's
        # channel times out once a second for the Redis probe, and only that one
        assert after[1] == before[1], (before, after)
        assert after[0] - before[0] <= 1, (before, after)
        assert 1 <= pipe.channels[1].idle_timeouts - probes <= 2
        assert pipe.channels[0].idle_timeouts == 0
        # and it still streams
        mariadb.execute(f"INSERT INTO {fresh_db}.items VALUES (2)")
        wait_for(lambda: redis_client.xlen("cdc:e2e") == 2, what="second event")
    finally:
        sup.stop.set()
        t.join(10)
    assert not t.is_alive()  # the stop woke the blocked reader and the run ended


@pytest.mark.integration
@pytest.mark.parametrize("workers", TOPOLOGIES)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_an_idle_engine_cleanly(sig: int, tmp_path: Path, mariadb: MariaDBServer,
                                              redis_server: RedisServer, fresh_db: str, workers: str) -> None:
    # every thread (and every worker process) is parked in a blocking wait: the handler must still run
    # and wake them all
    mariadb.execute(f"CREATE TABLE {fresh_db}.items (id INT PRIMARY KEY)")
    cfg = write_config(tmp_path, mariadb, redis_server, [f"{fresh_db}.items"], start=binlog_end(mariadb),
                       processors=TAG_PROCESSOR)
    engine = start_engine(cfg, "--workers", workers)
    time.sleep(1.0)
    code, out = stop_engine(engine, sig)
    assert code == 0, out
    assert "stopped:" in out and "Traceback" not in out
