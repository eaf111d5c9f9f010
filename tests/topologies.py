"""Pytest fixtures for the Redis topologies (DESIGN.md §9, §10): a Redis Cluster and a Sentinel set.

Import them into a test module (tests/conftest.py is not theirs) and name them once, so that ruff
sees the import used (F401) and a test's argument of the same name is no redefinition (F811)::

    from tests.topologies import redis_cluster, redis_sentinel

    FIXTURES = (redis_cluster, redis_sentinel)

``redis_cluster`` is module-scoped (~3 s to form): tests may fail it over and migrate slots (it stays
healthy), but a test that kills nodes starts its own :class:`RedisCluster`. ``redis_sentinel`` is
function-scoped (~1.5 s) because tests fail it over and kill its master. Both are stopped however
the tests end; a missing ``redis-server`` fails them with the package to install, never skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deltaforge.testing_topologies import RedisCluster, RedisSentinelSet


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisCluster]:
    """3 masters, 1 replica each, no password."""
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_sentinel() -> Iterator[RedisSentinelSet]:
    """A primary, a replica and 3 sentinels monitoring them as ``mymaster``, no password."""
    sentinels = RedisSentinelSet().start()
    try:
        yield sentinels
    finally:
        sentinels.stop()
