"""Checkpoint lineage against a real Redis: rollbacks re-deliver, lost replies resume, others are fenced.

The checkpoint value carries (owner, commit counter, prev); see the module header of
deltaforge/sink/redis_stream.py. The Redis-restart-from-snapshot version of these
scenarios, through ``deltaforge run``, is in tests/test_exactly_once.py.

These drive one sink object directly (no engine), so they have no topology to vary. The same
lineage through ``deltaforge run`` with ``--workers`` 0, 1 and 3 (where the supervisor claims the
checkpoint and the writer process continues its lineage): tests/test_exactly_once.py (a rollback
within one run, and to before a takeover) and tests/test_e2e.py (a second instance is fenced).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from deltaforge.errors import CheckpointRolledBack, FencedError, SinkError
from deltaforge.sink.envelope import StreamTemplate
from deltaforge.sink.redis_stream import legacy_checkpoint_key
from deltaforge.testing import RedisServer
from tests.test_sink import cfg, event_ids, ids_of, make_batch, make_sink

pytestmark = pytest.mark.integration


def _rollback(client: Any, sink: Any, value: bytes, stream: str, keep: int) -> None:
    """What a restart from an older snapshot does: the checkpoint and the stream back to an earlier commit."""
    client.set(sink.checkpoint_key, value)
    ids = [i for i, _ in client.xrange(stream)]
    if ids[keep:]:
        client.xdel(stream, *ids[keep:])


def test_rollback_is_detected_and_redelivered(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server))
    sink.open()
    b1, b2, b3, b4 = (make_batch(3, i) for i in range(1, 5))
    sink.write(b1)
    after_b1 = sink.last_value
    assert after_b1 is not None
    sink.write(b2)
    sink.write(b3)
    _rollback(redis_client, sink, after_b1, "cdc:events", 3)
    with pytest.raises(CheckpointRolledBack, match=r"rolled back.*2 commit\(s\) were lost") as exc:
        sink.write(b4)
    assert exc.value.retriable
    assert event_ids(redis_server, "cdc:events") == ids_of(b1)  # nothing of b4 landed
    # the pipeline's restart: the same lineage opens again and re-delivers from the older checkpoint
    again = make_sink(cfg(redis_server))
    assert again.open(expect=sink.last_value) == b1.end
    for b in (b2, b3, b4):
        again.write(b)
    assert event_ids(redis_server, "cdc:events") == ids_of(b1, b2, b3, b4)
    doc = json.loads(redis_client.get(sink.checkpoint_key))
    assert doc["owner"] == sink.owner and doc["commit"] > json.loads(after_b1)["commit"] + 3
    again.close()
    sink.close()


def test_a_lost_reply_whose_commit_landed_resumes_without_fencing(redis_server: RedisServer,
                                                                   redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server))
    sink.open()
    b1, b2, b3 = (make_batch(2, i) for i in range(1, 4))
    sink.write(b1)
    before = sink.last_value
    sink.write(b2)  # say its EXEC reply was lost and the retries ran out: the process only knows `before`
    again = make_sink(cfg(redis_server))
    assert again.open(expect=before) == b2.end
    again.write(b3)
    assert event_ids(redis_server, "cdc:events") == ids_of(b1, b2, b3)
    again.close()
    sink.close()


def test_rollback_to_before_a_takeover_is_still_ours(redis_server: RedisServer, redis_client: Any) -> None:
    """Instance B took over from A; Redis then rolls back to a value A wrote: B re-delivers, not fenced."""
    a = make_sink(cfg(redis_server))
    a.open()
    b1, b2, b3 = (make_batch(2, i) for i in range(1, 4))
    a.write(b1)
    a_value = a.last_value
    a.close()
    b = make_sink(cfg(redis_server))
    assert b.open() == b1.end
    b.write(b2)
    assert b.last_value is not None
    _rollback(redis_client, b, a_value, "cdc:events", 2)  # type: ignore[arg-type]
    with pytest.raises(CheckpointRolledBack):
        b.write(b3)
    c = make_sink(cfg(redis_server))
    assert c.open(expect=b.last_value) == b1.end
    c.write(b2)
    c.write(b3)
    assert event_ids(redis_server, "cdc:events") == ids_of(b1, b2, b3)
    c.close()
    b.close()


def test_another_owner_after_a_restart_is_fenced(redis_server: RedisServer, redis_client: Any) -> None:
    first = make_sink(cfg(redis_server))
    first.open()
    first.write(make_batch(2, 1))
    mine = first.last_value
    other = make_sink(cfg(redis_server))
    other.open()  # a second instance claims the pipeline
    again = make_sink(cfg(redis_server))
    with pytest.raises(FencedError, match="another instance owns pipeline"):
        again.open(expect=mine)
    other.close()
    first.close()


def test_a_vanished_checkpoint_stops_instead_of_guessing(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server))
    sink.open()
    sink.write(make_batch(2, 1))
    mine = sink.last_value
    redis_client.delete(sink.checkpoint_key)
    again = make_sink(cfg(redis_server))
    with pytest.raises(SinkError, match="vanished") as exc:
        again.open(expect=mine)
    assert not exc.value.retriable and "spec.source.config.start" in str(exc.value)
    # a fresh process finds the stream holding this pipeline's entries but no checkpoint: it stops too
    fresh = make_sink(cfg(redis_server))
    with pytest.raises(SinkError, match=r"holds entries of pipeline 'pipe'.*checkpoint .* is missing"):
        fresh.open()
    sink.close()


def test_a_checkpoint_under_the_old_stream_derived_key_is_adopted(redis_server: RedisServer,
                                                                   redis_client: Any) -> None:
    old = legacy_checkpoint_key(StreamTemplate("cdc:events"), "pipe", "s1")
    assert old == "{cdc:events}:deltaforge:checkpoint:pipe:s1"
    sink = make_sink(cfg(redis_server))
    sink.open()
    sink.write(make_batch(2, 1))
    value = redis_client.get(sink.checkpoint_key)
    redis_client.delete(sink.checkpoint_key)
    redis_client.set(old, value)  # as an older version left it
    again = make_sink(cfg(redis_server))
    assert again.open() == make_batch(2, 1).end
    assert redis_client.get(old) is None and redis_client.get(again.checkpoint_key) is not None
    again.close()
    sink.close()


def test_renaming_the_stream_keeps_the_checkpoint(redis_server: RedisServer, redis_client: Any) -> None:
    sink = make_sink(cfg(redis_server, "cdc:old"))
    sink.open()
    sink.write(make_batch(2, 1))
    sink.close()
    renamed = make_sink(cfg(redis_server, "cdc:new"))
    assert renamed.checkpoint_key == sink.checkpoint_key
    assert renamed.open() == make_batch(2, 1).end
    renamed.close()
