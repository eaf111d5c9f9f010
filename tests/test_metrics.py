"""The pipeline's figures without servers: histograms observed in one process and added into
another's (the multi-process topology's reports), trim counters likewise, the exposition through
prometheus-client, /health and /ready, and the progress line's CPU shares."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from deltaforge.runtime.stats import HISTOGRAMS, Histograms, StageClock, Stats
from deltaforge.sink.trim import TrimMetrics


def test_histograms_taken_in_a_child_add_up_in_the_supervisor() -> None:
    child, parent = Histograms(), Stats()
    for v in (0.0004, 0.002, 0.002, 7.0, 99.0):
        child.observe("commit_seconds", v)
    parent.hists.add(child.take())
    assert child.take() == {}  # taken once
    child.observe("commit_seconds", 0.002)
    parent.hists.add(child.take())
    h = parent.hists.by_name["commit_seconds"]
    bounds = HISTOGRAMS["commit_seconds"][1]
    assert sum(h.counts) == 6 and h.sum == pytest.approx(106.0064)
    assert h.counts[bounds.index(0.0005)] == 1 and h.counts[bounds.index(0.0025)] == 3
    assert h.counts[bounds.index(10.0)] == 1 and h.counts[-1] == 1  # 99 s: above every bound
    text = parent.prometheus("p")
    assert 'deltaforge_commit_seconds_bucket{le="0.0025",pipeline="p"} 4.0' in text  # cumulative
    assert 'deltaforge_commit_seconds_bucket{le="+Inf",pipeline="p"} 6.0' in text
    assert 'deltaforge_commit_seconds_count{pipeline="p"} 6.0' in text


def test_trim_counters_taken_in_the_writer_add_up_in_the_supervisor() -> None:
    writer, supervisor = TrimMetrics(), TrimMetrics()
    writer.register("p", "s")
    supervisor.add(writer.take())
    assert supervisor.trims["p", "s"] == 0  # visible as 0 before the first trim
    writer.trims["p", "s"] += 2
    writer.unacked["p", "s", "st", "g"] += 5
    writer.held["p", "s", "st"] = 7
    supervisor.add(writer.take())
    writer.trims["p", "s"] += 1
    writer.held["p", "s", "st"] = 0
    supervisor.add(writer.take())
    assert supervisor.trims["p", "s"] == 3 and supervisor.unacked["p", "s", "st", "g"] == 5
    assert supervisor.held["p", "s", "st"] == 0  # a gauge: the latest value


def test_health_is_liveness_and_ready_is_readiness() -> None:
    st = Stats()
    assert st.health()[0] == 200 and st.ready()[0] == 503  # starting
    st.state = "running"
    assert st.health()[0] == 200 and st.ready()[0] == 200
    st.state, st.last_error = "restarting", "the reader process died (signal 9)"
    assert st.health() == (200, "ok: restarting, position None, lag 0 ms (the reader process died (signal 9))\n")
    assert st.ready() == (503, "restarting (the reader process died (signal 9))\n")
    st.state = "stopped"
    assert st.health()[0] == 503 and st.ready()[0] == 503


def test_the_progress_line_names_each_stage_and_its_cpu_share(caplog: pytest.LogCaptureFixture) -> None:
    st = Stats()
    st.progress_every_s = 0.0
    busy = threading.Event()

    def spin() -> None:
        x = 0
        while not busy.is_set():
            x += 1

    t = threading.Thread(target=spin)
    t.start()
    st.clock.stages = {"reader": (os.getpid(), t.native_id), "writer": (os.getpid(), threading.get_native_id())}
    try:
        with caplog.at_level(logging.INFO, "deltaforge.pipeline"):
            st.progress_line()
            busy.wait(0.3)
            st.events_in = 10
            st.progress_line()
    finally:
        busy.set()
        t.join()
    line = caplog.records[-1].getMessage()
    assert line.startswith("committed 10 events (") and "; cpu: reader " in line and ", writer " in line, line
    reader_share = int(line.split("cpu: reader ")[1].split("%")[0])
    assert reader_share >= 20, line  # a spinning thread (not wall-clock: a share of what it got)


def test_a_stage_that_is_gone_drops_out_of_the_shares() -> None:
    clock = StageClock()
    clock.stages = {"gone": (2**22 + 12345, None), "me": (os.getpid(), None)}
    clock.shares()
    assert set(clock.shares()) == {"me"}
