"""DeltaForge: MySQL/MariaDB binlog -> JavaScript processors -> Redis Streams, exactly once."""

__version__ = "0.1.0"
