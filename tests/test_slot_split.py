"""A stream template spread over Redis Cluster slots (``sink/slot_split.py``), on a real cluster.

Each stream commits its entries and its own checkpoint in one MULTI on its slot's master; the
floor key covers streams whose checkpoint does not exist yet. These tests break the parts apart:
a crash between two streams' commits, a quiet stream, a checkpoint Redis lost, a second owner.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from deltaforge.config import RedisSinkConfig
from deltaforge.errors import FencedError, SinkError
from deltaforge.model import Batch, Event
from deltaforge.redisclient import key_slot
from deltaforge.sink import slot_split
from deltaforge.sink.redis_stream import RedisStreamSink
from deltaforge.sink.slot_split import SlotSplitSink, make_redis_sink, part_checkpoint_key
from tests.test_sink import PIPELINE, make_batch
from tests.topologies import redis_cluster

FIXTURES = (redis_cluster,)  # used as test arguments (tests/topologies.py)

pytestmark = pytest.mark.integration



def _tables(sink_id: str) -> tuple[str, str, str]:
    """Three tables whose streams fall in the three thirds of the slot space (one per master of
    the fixture's even split), found by trying names in order: deterministic."""
    picked: dict[int, str] = {}
    k = 0
    while len(picked) < 3:
        table = f"app.t{k}"
        picked.setdefault(key_slot(f"cdc:{sink_id}:{table}") * 3 // 16384, table)
        k += 1
    return picked[0], picked[1], picked[2]


def _sink(cluster: Any, sink_id: str, **extra: Any) -> SlotSplitSink:
    cfg = RedisSinkConfig(id=sink_id, uri=cluster.uri, stream="cdc:" + sink_id + ":${table}", **extra)
    sink = make_redis_sink(cfg, PIPELINE, None, "spec.sinks[0]")
    assert isinstance(sink, SlotSplitSink)
    sink.retry_initial, sink.retry_deadline = 0.02, 5.0
    return sink


def _rows(client: Any, stream: str) -> list[tuple[str, int]]:
    """(event_id, row id) of every entry, in stream order."""
    out = []
    for _id, fields in client.xrange(stream):
        event = json.loads(fields[b"df-event"])
        out.append((event["event_id"], event["after"]["id"]))
    return out


def _streams(sink_id: str) -> list[str]:
    return [f"cdc:{sink_id}:{t}" for t in _tables(sink_id)]


def test_a_batch_over_several_slots_commits_each_stream_with_its_own_checkpoint(redis_cluster: Any) -> None:
    sink = _sink(redis_cluster, "spread")
    assert sink.open() is None
    batch = make_batch(9, 1, tables=_tables("spread"))
    sink.write(batch)
    sink.close()
    client = redis_cluster.client()
    streams = _streams("spread")
    assert len({key_slot(s) for s in streams}) == 3
    assert len({redis_cluster.master_of_key(s).port for s in streams}) >= 2  # really over several masters
    for s in streams:
        assert len(_rows(client, s)) == 3
        value = json.loads(client.get(part_checkpoint_key(s, PIPELINE, "spread")))
        assert (value["file"], value["pos"]) == (batch.end.file, batch.end.pos)
        assert key_slot(part_checkpoint_key(s, PIPELINE, "spread")) == key_slot(s)
    floor = json.loads(client.get(sink.checkpoint_key))
    assert (floor["pos"], floor["commit"]) == (batch.end.pos, 3)  # commit: the number of streams

    again = _sink(redis_cluster, "spread")
    assert again.open() == batch.end
    again.write(batch)  # a replay after a restart: every stream holds it already
    again.write(make_batch(3, 2, tables=_tables("spread")))
    again.close()
    for s in streams:
        rows = _rows(client, s)
        assert len(rows) == len(set(rows)) == 4  # 3 of batch 1 (once), 1 of batch 2
    client.close()


def test_a_crash_between_two_streams_commits_loses_and_repeats_nothing(
        redis_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 2 starts a new stream; the process dies after one stream committed it and before the
    new stream's first commit. The new stream has no checkpoint yet: the floor brings it back."""
    sink = _sink(redis_cluster, "crash")
    sink.open()
    first = make_batch(4, 1, tables=_tables("crash")[:2])
    sink.write(first)
    second = make_batch(6, 2, tables=_tables("crash"))
    new_stream = _streams("crash")[2]
    real_write = RedisStreamSink.write

    def dies_on_the_new_stream(self: RedisStreamSink, batch: Batch) -> None:
        if self.template.static == new_stream:
            raise KeyboardInterrupt("killed between two commits")
        real_write(self, batch)

    monkeypatch.setattr(RedisStreamSink, "write", dies_on_the_new_stream)
    with pytest.raises(KeyboardInterrupt):
        sink.write(second)
    monkeypatch.setattr(RedisStreamSink, "write", real_write)
    sink.close()

    client = redis_cluster.client()
    assert client.exists(new_stream) == 0
    restarted = _sink(redis_cluster, "crash")
    resume = restarted.open()
    assert resume == first.end  # the floor: not the newer checkpoint of the streams that committed
    for batch in (second, make_batch(3, 3, tables=_tables("crash"))):  # the source replays from the floor
        restarted.write(batch)
    restarted.close()
    for s in _streams("crash"):
        rows = _rows(client, s)
        assert len(rows) == len(set(rows)), f"{s} holds a duplicate: {rows}"
    assert [r for _e, r in _rows(client, new_stream)] == [2, 5, 2]
    assert len(_rows(client, _streams("crash")[0])) == 2 + 2 + 1
    client.close()


def test_a_quiet_stream_does_not_hold_the_resume_point_back(
        redis_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slot_split, "REFRESH_S", 0.0)
    sink = _sink(redis_cluster, "quiet")
    sink.open()
    sink.write(make_batch(3, 1, tables=_tables("quiet")))
    last = None
    for b in range(2, 6):
        last = make_batch(2, b, tables=_tables("quiet")[:1])  # only the first table changes
        sink.write(last)
    sink.close()
    client = redis_cluster.client()
    quiet = json.loads(client.get(part_checkpoint_key(_streams("quiet")[2], PIPELINE, "quiet")))
    assert last is not None and quiet["pos"] == last.end.pos
    client.close()
    again = _sink(redis_cluster, "quiet")
    assert again.open() == last.end
    again.close()


def test_a_per_stream_checkpoint_redis_lost_stops_the_sink(redis_cluster: Any) -> None:
    sink = _sink(redis_cluster, "lost")
    sink.open()
    sink.write(make_batch(6, 1, tables=_tables("lost")))
    sink.close()
    client = redis_cluster.client()
    client.delete(part_checkpoint_key(_streams("lost")[1], PIPELINE, "lost"))
    client.close()
    with pytest.raises(SinkError) as info:
        _sink(redis_cluster, "lost").open()
    text = str(info.value)
    assert "3 per-stream checkpoints were committed but 2" in text and "spec.source.config.start" in text


def test_a_second_owner_fences_the_first_on_every_stream(redis_cluster: Any) -> None:
    first = _sink(redis_cluster, "fence")
    first.open()
    first.write(make_batch(3, 1, tables=_tables("fence")))
    second = _sink(redis_cluster, "fence")
    assert second.open() is not None  # claims every stream's checkpoint
    with pytest.raises(FencedError):
        first.write(make_batch(3, 2, tables=_tables("fence")))
    with pytest.raises(FencedError):
        first.write(make_batch(3, 3, tables=_tables("fence")))
    second.write(make_batch(3, 2, tables=_tables("fence")))
    first.close()
    second.close()
    client = redis_cluster.client()
    for s in _streams("fence"):
        assert len(_rows(client, s)) == 2
    client.close()


def test_dead_letters_commit_next_to_their_stream(redis_cluster: Any) -> None:
    from deltaforge.model import DeadLetter

    sink = _sink(redis_cluster, "dead")
    sink.open()
    batch = make_batch(2, 1, tables=_tables("dead")[:1])
    event = make_batch(1, 1, tables=_tables("dead")[1:2]).events[0]
    assert isinstance(event, Event)
    batch.dead = [DeadLetter(stage="processor", processor="js", error="boom", table=event.table,
                             file=event.source.file, pos=event.source.pos, event_id=event.event_id, event=event)]
    batch.dead_keys = [(1, 1000, 9)]
    sink.write(batch)
    sink.close()
    client = redis_cluster.client()
    dlq = "{" + _streams("dead")[1] + "}:dlq"
    assert client.xlen(dlq) == 1 and key_slot(dlq) == key_slot(_streams("dead")[1])
    client.close()


def test_one_master_rolling_back_re_delivers_that_stream_alone(redis_cluster: Any) -> None:
    """One stream's master goes back in time (what a failover to a lagging replica does to that
    slot: its entries and its checkpoint, together); the others do not. The live sink sees it at
    the next commit, the pipeline reopens with what it had committed, resumes at that stream's
    older checkpoint and re-delivers to it alone."""
    from deltaforge.errors import CheckpointRolledBack

    tables = _tables("rollback")
    streams = _streams("rollback")
    sink = _sink(redis_cluster, "rollback")
    sink.open()
    first = make_batch(6, 1, tables=tables)
    sink.write(first)
    client = redis_cluster.client()
    victim = streams[1]
    key = part_checkpoint_key(victim, PIPELINE, "rollback")
    old_value, old_ids = client.get(key), [i for i, _f in client.xrange(victim)]
    second = make_batch(6, 2, tables=tables)
    sink.write(second)
    # the rollback: the entries and the checkpoint of batch 2 vanish from that slot only
    client.xdel(victim, *[i for i, _f in client.xrange(victim) if i not in old_ids])
    client.set(key, old_value)
    third = make_batch(6, 3, tables=tables)
    with pytest.raises(CheckpointRolledBack):
        sink.write(third)
    expect = sink.last_value
    sink.close()

    again = _sink(redis_cluster, "rollback")
    assert again.open(expect) == first.end
    for batch in (second, third):  # the source replays from there
        again.write(batch)
    again.close()
    for s in streams:
        rows = _rows(client, s)
        assert len(rows) == len(set(rows)) == 6, (s, rows)  # 2 rows of each of the 3 batches, once
    client.close()


def test_a_reader_block_is_split_by_table_without_decoding_every_event(redis_cluster: Any) -> None:
    """The hot path's EventBlock: each stream gets a block of the same bytes (one event decoded
    per table to render its stream), and lands what the Event objects would have landed."""
    from deltaforge.model import EventBlock

    tables = _tables("block")
    sink = _sink(redis_cluster, "block")
    sink.open()
    batch = make_batch(7, 1, tables=tables)
    events = list(batch.events)
    block = EventBlock.from_lines([EventBlock.from_events(events).line(i) for i in range(len(events))],
                                  [e.table for e in events], [e.transaction.id if e.transaction else "" for e in events],
                                  [e.tenant_id for e in events])
    assert block._events is None  # nothing decoded yet
    sink.write(Batch(seq=1, events=block, keys=batch.keys, end=batch.end))
    sink.close()
    assert block._events is None  # still: split by the table column, one line decoded per table
    client = redis_cluster.client()
    landed = {s: [e for e, _r in _rows(client, s)] for s in _streams("block")}
    client.close()
    assert landed == {f"cdc:block:{t}": [e.event_id for e in events if e.table == t] for t in tables}
