"""redis-py clients for a parsed :class:`~deltaforge.dsn.RedisURI`, whatever its topology.

The one translation from the project's URI grammar to redis-py, used by ``deltaforge worker``,
:class:`deltaforge.cache.LeaseCache`, ``deltaforge check`` and the bench (the engine's sink speaks
RESP itself, ``deltaforge/sink/redis_conn.py``, and asks :func:`sentinel_master` where to go):

- ``redis://`` / ``rediss://``: ``redis.Redis``;
- ``redis+sentinel://``: the master the sentinels name for ``service``, through redis-py's
  ``Sentinel.master_for``: a client whose connections ask the sentinels again after a connection
  error, so it follows a failover;
- ``redis+cluster://``: ``redis.cluster.RedisCluster`` over the seed nodes; it keeps the slot map
  and follows MOVED and ASK.

Hazards:
- redis-py retries failed commands on its own by default (ten times, silently). Callers that run
  their own backoff and log it pass ``retries=0`` so a failure reaches them at once.
- A cluster client rejects multi-key commands whose keys span slots (CROSSSLOT); callers group
  keys by :func:`key_slot` first (:func:`by_slot`).
- Building a ``RedisCluster`` connects at once (CLUSTER SLOTS and COMMAND on a seed) and raises
  ``redis.exceptions.RedisClusterException``, which is not a ``RedisError``, when no seed answers;
  ``redis.Redis`` and the sentinels' master connect on first use.
- redis-py's ``ClusterPipeline`` refuses ``pipe.evalsha(...)``; ``pipe.execute_command("EVALSHA",
  sha, 1, key, ...)`` routes by the key like any single-key command.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from deltaforge.dsn import RedisURI


def key_slot(key: str | bytes) -> int:
    """The cluster hash slot of ``key`` (hash tags honoured)."""
    from redis.cluster import key_slot as _slot

    return int(_slot(key.encode() if isinstance(key, str) else key))


K = TypeVar("K", bound="str | bytes")


def by_slot(keys: Iterable[K]) -> dict[int, list[K]]:
    """``keys`` grouped by hash slot, each group in the keys' order: one multi-key command per group
    never spans slots."""
    groups: dict[int, list[K]] = {}
    for key in keys:
        groups.setdefault(key_slot(key), []).append(key)
    return groups


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a ``redis.cluster.RedisCluster`` (per-slot routing, no cross-slot MULTI)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _tls_kwargs(uri: RedisURI) -> dict[str, Any]:
    if not uri.tls:
        return {}
    return {"ssl": True, "ssl_ca_certs": uri.params.get("ssl_ca_certs"),
            "ssl_cert_reqs": (uri.params.get("ssl_cert_reqs") or "required").lower()}


def _timeouts(uri: RedisURI, connect_timeout: float | None, socket_timeout: float | None) -> dict[str, Any]:
    """The URI's ``connect_timeout``/``socket_timeout`` win over the caller's defaults (5 s each);
    a caller's socket timeout that must outlast a blocking read is raised to it, never lowered."""
    p = uri.params
    connect = float(p.get("connect_timeout") or connect_timeout or 5.0)
    read = float(p.get("socket_timeout") or 0.0)
    read = max(read, socket_timeout or 0.0) or 5.0
    return {"socket_connect_timeout": connect, "socket_timeout": read}


def redis_py_client(uri: RedisURI, *, connect_timeout: float | None = None, socket_timeout: float | None = None,
                    retries: int | None = None, **extra: Any) -> Any:
    """A redis-py client for ``uri``: ``redis.Redis`` (single node, or the sentinels' master) or
    ``redis.cluster.RedisCluster``. ``retries=0`` turns redis-py's own command retries off."""
    common: dict[str, Any] = {"username": uri.username, "password": uri.password, **_tls_kwargs(uri),
                              **_timeouts(uri, connect_timeout, socket_timeout), **extra}
    if retries is not None:
        common["retry"] = Retry(NoBackoff(), retries)
    if uri.topology == "cluster":
        from redis.cluster import ClusterNode, RedisCluster

        if retries is not None:
            # RedisCluster takes `retry` for itself, not for its node connections (those never retry);
            # one retry re-reads the slot map after a connection error, as redis-py's default does.
            common["retry"] = Retry(NoBackoff(), max(retries, 1))
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in uri.seeds], **common)
    if uri.topology == "sentinel":
        return sentinel(uri, connect_timeout=connect_timeout).master_for(uri.service, db=uri.db, **common)
    return redis.Redis(host=uri.host, port=uri.port, db=uri.db, **common)


#: what the sentinels' user (the URI's ``sentinel_username``) must be allowed on every sentinel
#: (README, Security; tests/test_topology_acls.py runs one with just these): SENTINEL MASTERS is how
#: redis-py's ``discover_master`` finds the master (the sink at every connect, the worker,
#: LeaseCache); ``deltaforge check`` (and ``deltaforge run``'s preflight) asks each sentinel
#: GET-MASTER-ADDR-BY-NAME to compare their answers. (Its replica count, SENTINEL SLAVES, is
#: left out when refused.) AUTH: the login.
SENTINEL_ACL_COMMANDS = ("+sentinel|masters", "+sentinel|get-master-addr-by-name", "+auth")


def sentinel(uri: RedisURI, *, connect_timeout: float | None = None) -> Any:
    """A ``redis.sentinel.Sentinel`` over the URI's sentinels (their own credentials from
    ``sentinel_username``/``sentinel_password``; TLS as the URI says)."""
    from redis.sentinel import Sentinel

    p = uri.params
    timeouts = _timeouts(uri, connect_timeout, None)
    sentinel_kwargs: dict[str, Any] = {"username": p.get("sentinel_username"),
                                       "password": p.get("sentinel_password"), **_tls_kwargs(uri), **timeouts}
    return Sentinel(list(uri.seeds), sentinel_kwargs=sentinel_kwargs, **_tls_kwargs(uri), **timeouts)


def sentinel_master(uri: RedisURI, *, connect_timeout: float | None = None) -> tuple[str, int]:
    """The address the sentinels give for ``uri.service`` now (redis-py checks that the sentinel
    answering sees the master up and is not in the minority). Raises ``redis.sentinel.MasterNotFoundError``
    (a ``ConnectionError``) when no sentinel knows a master for it, and ``redis.exceptions.NoPermissionError``
    when a sentinel refuses SENTINEL MASTERS to the URI's sentinel user (:data:`SENTINEL_ACL_COMMANDS`)."""
    host, port = sentinel(uri, connect_timeout=connect_timeout).discover_master(uri.service)
    return _text(host), int(port)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cluster_slot_owner(uri: RedisURI, slot: int, *, connect_timeout: float | None = None) -> tuple[str, int]:
    """The address of the master serving ``slot`` now, from ``CLUSTER SLOTS`` of the first seed
    node that answers (asked again on every connect: resharding and failovers move slots).
    Raises ``redis.ConnectionError`` when no seed answers or no node serves the slot, and
    ``redis.AuthenticationError``/``redis.exceptions.NoPermissionError`` (a user without
    ``+cluster|slots``) at once: retrying cannot cure them."""
    errors: list[str] = []
    for host, port in uri.seeds:
        client = redis.Redis(host=host, port=port, username=uri.username, password=uri.password,
                             **_tls_kwargs(uri), **_timeouts(uri, connect_timeout, None),
                             retry=Retry(NoBackoff(), 0))
        try:
            for first, last, master, *_replicas in client.execute_command("CLUSTER SLOTS"):
                if int(first) <= slot <= int(last):
                    return (_text(master[0]) or host), int(master[1])
            errors.append(f"{host}:{port} knows no node serving slot {slot}")
        except (redis.AuthenticationError, redis.exceptions.NoPermissionError):
            raise
        except redis.RedisError as e:
            errors.append(f"{host}:{port}: {e}")
        finally:
            client.close()
    raise redis.ConnectionError("; ".join(errors) or "no seed node given")
