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
- TLS (``rediss``, ``rediss+cluster``, ``rediss+sentinel``) is the same for every connection: to a
  single node, to each cluster node, to the sentinels and to the master they name (:func:`_tls_kwargs`).
  The certificate and its host name are verified unless ``ssl_cert_reqs=none``: the host name
  explicitly (redis-py before 6 does not check it by default). The addresses a cluster (CLUSTER
  SLOTS) or the sentinels announce are the names checked, so the certificates must hold those.
  A failed handshake is no transient error: :func:`tls_failure` recognises it (a sentinel's too:
  :func:`sentinel`'s ``MasterNotFoundError`` chains it), for callers to stop with the fix.
- redis-py's ``ClusterPipeline`` refuses ``pipe.evalsha(...)``; ``pipe.execute_command("EVALSHA",
  sha, 1, key, ...)`` routes by the key like any single-key command.
"""

from __future__ import annotations

import functools
import re
import ssl
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
    """redis-py's TLS arguments for ``uri``: the same for a node, a cluster's nodes, the sentinels and
    their master. The host name is checked whenever the certificate is (explicitly: redis-py 5 does
    not by default); ``ssl_cert_reqs=none`` checks neither."""
    if not uri.tls:
        return {}
    reqs = (uri.params.get("ssl_cert_reqs") or "required").lower()
    return {"ssl": True, "ssl_ca_certs": uri.params.get("ssl_ca_certs"), "ssl_cert_reqs": reqs,
            "ssl_check_hostname": reqs != "none"}


#: an OpenSSL error as Python prints it: ``[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed:
#: unable to get local issuer certificate (_ssl.c:1006)``; also inside the repr() of a redis-py error
_SSL_TEXT = re.compile(r"\[SSL(?:: (?P<code>[A-Z0-9_]+))?\] (?P<reason>.*?)\s*(?:\(_ssl\.c[^)]*\)|['\"]\)|$)")


def _ssl_reason(text: str) -> tuple[str, str] | None:
    match = _SSL_TEXT.search(text)
    if match is None:
        return None
    return match.group("code") or "", match.group("reason").strip().rstrip(".").strip()


def tls_failure(exc: BaseException, where: str) -> tuple[str, str] | None:
    """When ``exc`` is a failed TLS handshake (the ``ssl.SSLError`` in its cause chain, a cluster
    client's, a seed's or a sentinel's included, else the OpenSSL text in its message):
    ``(what failed, the fix)``, the fix naming ``where`` (the option or URI to change). None
    for anything else. No retry cures these: the callers stop instead of retrying."""
    found: tuple[str, str] | None = None
    seen: BaseException | None = exc
    for _ in range(10):  # a short chain; bounded in case of a cycle
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            found = ("CERTIFICATE_VERIFY_FAILED", f"certificate verify failed: {seen.verify_message}")
            break
        if isinstance(seen, ssl.SSLError):
            found = _ssl_reason(str(seen.strerror or seen)) or (str(seen.reason or ""), str(seen))
            break
        seen = seen.__cause__ or seen.__context__
    found = found or _ssl_reason(str(exc))
    if found is None:
        return None
    code, reason = found
    reason = reason or code or "TLS error"
    if code == "CERTIFICATE_VERIFY_FAILED" and ("mismatch" in reason or "not valid for" in reason
                                                 or "hostname" in reason.lower()):
        return (f"the server's TLS certificate does not name the address connected to ({reason})",
                f"connect by an address the certificate holds (its subjectAltName): the one in {where}, or the "
                "ones a cluster or the sentinels announce (cluster-announce-ip, replica-announce-ip)")
    if code == "CERTIFICATE_VERIFY_FAILED":
        return (f"the server's TLS certificate is not trusted ({reason})",
                f"add ?ssl_ca_certs=<the CA file that signed the servers' certificates> to {where} "
                "(ssl_cert_reqs=none skips the verification)")
    if code in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return (f"the server does not speak TLS there ({reason})",
                f"use redis:// instead of rediss:// in {where}, or the server's tls-port")
    return (f"the TLS handshake failed ({reason})",
            f"check the server's TLS settings and ?ssl_ca_certs=<the CA file> in {where}")


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


@functools.cache
def _sentinel_class() -> type:
    """:class:`redis.sentinel.Sentinel` whose ``discover_master`` keeps each sentinel's error.

    Upstream's ``MasterNotFoundError`` lists them as ``repr()`` text only (redis-py 8: not even the
    message, ``network:ConnectionError``) and chains none, so a failed TLS handshake with every
    sentinel looked like sentinels that are down, retried for ever. Here the message names each
    sentinel and its error, and the error is chained (a TLS failure first) for :func:`tls_failure`.
    The rest is upstream's logic: the first sentinel that sees the master up, not in the minority,
    is moved to the front."""
    from redis.sentinel import MasterNotFoundError, Sentinel

    class _Sentinel(Sentinel):
        def discover_master(self, service_name: str) -> tuple[Any, Any]:
            errors: list[tuple[str, BaseException]] = []
            for index, node in enumerate(self.sentinels):
                try:
                    masters = node.sentinel_masters()
                except (redis.ConnectionError, redis.TimeoutError) as e:
                    errors.append(("{host}:{port}".format(**node.connection_pool.connection_kwargs), e))
                    continue
                state = masters.get(service_name)
                if state and self.check_master_state(state, service_name):
                    self.sentinels[0], self.sentinels[index] = node, self.sentinels[0]
                    forced = getattr(self, "_force_master_ip", None)
                    return (forced if forced is not None else state["ip"]), state["port"]
            cause = next((e for _, e in errors if tls_failure(e, "") is not None), errors[0][1] if errors else None)
            seen = "; ".join(f"sentinel {addr}: {e}" for addr, e in errors)
            raise MasterNotFoundError(f"No master found for {service_name!r}" + (f" ({seen})" if seen else "")) \
                from cause

    return _Sentinel


def sentinel(uri: RedisURI, *, connect_timeout: float | None = None) -> Any:
    """A ``redis.sentinel.Sentinel`` over the URI's sentinels (their own credentials from
    ``sentinel_username``/``sentinel_password``; TLS as the URI says, to the sentinels and to the
    master they name).

    One attempt per sentinel and command (``retry`` of none): asking the next sentinel is the
    retry, and the callers back off on their own. (redis-py 6+ would otherwise retry each sentinel
    three times with backoff, seconds per sentinel down or refusing the handshake, before asking
    the next one.)"""
    p = uri.params
    timeouts = _timeouts(uri, connect_timeout, None)
    # TLS twice: ``sentinel_kwargs`` for the sentinels, the rest for the master (and replicas) they name
    sentinel_kwargs: dict[str, Any] = {"username": p.get("sentinel_username"),
                                       "password": p.get("sentinel_password"), **_tls_kwargs(uri), **timeouts,
                                       "retry": Retry(NoBackoff(), 0)}
    return _sentinel_class()(list(uri.seeds), sentinel_kwargs=sentinel_kwargs, **_tls_kwargs(uri), **timeouts)


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
    ``+cluster|slots``) or a seed's failed TLS handshake (:func:`tls_failure`) at once: retrying
    cannot cure them."""
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
            if tls_failure(e, "") is not None:
                raise
            errors.append(f"{host}:{port}: {e}")
        finally:
            client.close()
    raise redis.ConnectionError("; ".join(errors) or "no seed node given")
