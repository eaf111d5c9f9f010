"""Building blocks of ``deltaforge bench`` (see :mod:`deltaforge.bench` for the command).

``env``: the servers and :class:`BenchEnv`; ``workload``: the seed's tables, the backlog
writer and the seed pipeline's config; ``drain``: engine subprocess drains; ``memory``:
peak RSS; ``peers``/``stages``/``latency``: the naive peers, per-stage rates, latency.
"""

from deltaforge.benchkit.env import BenchEnv, BenchError, binlog_position, open_env, stream_rate
from deltaforge.benchkit.workload import (
    Backlog,
    parse_mix,
    prepare_schema,
    seed_config,
    seed_yaml,
    write_backlog,
    write_big_transaction,
)

__all__ = [
    "Backlog",
    "BenchEnv",
    "BenchError",
    "binlog_position",
    "open_env",
    "parse_mix",
    "prepare_schema",
    "seed_config",
    "seed_yaml",
    "stream_rate",
    "write_backlog",
    "write_big_transaction",
]
