"""The in-process topology and its supervisor, on list-based stages (no servers).

Batches reach the sinks once each and in order; a retriable sink failure restarts the run from
the checkpoint and loses or repeats nothing; a reader that fails commits what it handed out
before raising; a stop ends the run with exit status 0.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import pytest

from deltaforge.errors import SinkUnavailable, SourceError
from deltaforge.model import Batch, Position
from deltaforge.runtime.supervisor import Supervisor
from deltaforge.testing import ListSinks, ListSource

CFG: Any = types.SimpleNamespace(metadata=types.SimpleNamespace(name="t", tenant=None),
                                 spec=types.SimpleNamespace(source=types.SimpleNamespace(
                                     config=types.SimpleNamespace(start="earliest"))))


def _batches(n: int) -> list[Batch]:
    return [Batch(seq=i + 1, events=[], keys=[], end=Position(file="binlog.000001", pos=100 * (i + 1)))
            for i in range(n)]


class _Tagger:
    """A processor chain that marks what it processed."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def process(self, batch: Batch) -> Batch:
        self.seen.append(batch.seq)
        return batch

    def close(self) -> None:
        pass


def _run(sup: Supervisor, sinks: ListSinks, until: int) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def go() -> None:
        try:
            result.append(sup.run())
        except BaseException as e:  # noqa: BLE001 - the test reads it
            result.append(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    deadline = 200  # x 0.05 s: ample for a few batches
    while len(sinks.committed) < until and t.is_alive() and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    sup.stop.set()
    t.join(30)
    assert not t.is_alive()
    return t, result


def test_batches_arrive_once_in_order_through_the_processor() -> None:
    batches, sinks, chain = _batches(50), ListSinks(), _Tagger()
    sup = Supervisor(CFG, open_source=lambda cfg, stop, resume: ListSource(batches, stop, resume),
                     open_sinks=lambda cfg: sinks, open_chain=lambda cfg: chain)
    _, result = _run(sup, sinks, 50)
    assert result == [0]
    assert [b.seq for b in sinks.committed] == list(range(1, 51)) == chain.seen
    assert sup.stats.batches == 50 and sup.stats.position == batches[-1].end


def test_a_retriable_sink_failure_restarts_from_the_checkpoint_without_loss_or_repeat() -> None:
    batches = _batches(30)
    sinks = ListSinks(fail={7: SinkUnavailable("redis went away", "it restarts"),
                            20: SinkUnavailable("again", "it restarts")})
    sup = Supervisor(CFG, backoff_max_s=0.01, open_source=lambda cfg, stop, resume: ListSource(batches, stop, resume),
                     open_sinks=lambda cfg: sinks, open_chain=lambda cfg: None)
    _, result = _run(sup, sinks, 30)
    assert result == [0] and sup.stats.restarts == 2
    assert [b.seq for b in sinks.committed] == list(range(1, 31))


def test_a_failing_reader_commits_what_it_handed_out_then_the_error_ends_the_run() -> None:
    batches, sinks = _batches(5), ListSinks()
    err = SourceError("a change was logged as a statement", "set binlog_format=ROW")
    sup = Supervisor(CFG, open_source=lambda cfg, stop, resume: ListSource(batches, stop, resume, fail_with=err),
                     open_sinks=lambda cfg: sinks, open_chain=lambda cfg: None)
    _, result = _run(sup, sinks, 5)
    assert result == [err] and [b.seq for b in sinks.committed] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("fatal", [True, False])
def test_a_sink_error_that_is_not_retriable_ends_the_run(fatal: bool) -> None:
    from deltaforge.errors import SinkError

    batches = _batches(10)
    err = SinkError("the stream key holds a string", "delete it") if fatal else SinkUnavailable("down", "retry")
    sinks = ListSinks(fail={k: err for k in range(3, 40)})
    sup = Supervisor(CFG, max_restarts=2, backoff_max_s=0.01,
                     open_source=lambda cfg, stop, resume: ListSource(batches, stop, resume),
                     open_sinks=lambda cfg: sinks, open_chain=lambda cfg: None)
    _, result = _run(sup, sinks, 10)
    assert result == [err] and [b.seq for b in sinks.committed] == [1, 2]
    assert sup.stats.restarts == (0 if fatal else 3)


def test_workers_option_takes_a_count_or_auto() -> None:
    import os

    from deltaforge.errors import ConfigError
    from deltaforge.runtime.commands import _workers

    assert _workers("0") == 0 and _workers("3") == 3
    assert _workers("auto") == max(1, (os.cpu_count() or 2) - 1)
    for bad in ("lots", "-1", "65"):
        with pytest.raises(ConfigError, match=r"^--workers: .* is not a number of worker processes \(fix: pass 0"):
            _workers(bad)


def test_ring_size_option_takes_a_power_of_two_of_mib() -> None:
    from deltaforge.errors import ConfigError
    from deltaforge.runtime.commands import _ring_bytes

    assert _ring_bytes("1") == 1 << 20 and _ring_bytes("64") == 64 << 20
    for bad in ("0", "6", "2048", "big", "-4"):
        with pytest.raises(ConfigError, match=r"^--ring-mib: .* is not a ring size \(fix: pass a power of two"):
            _ring_bytes(bad)
