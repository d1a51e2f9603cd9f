"""The embedded defaults that both :class:`~service.config.Settings` and the parts'
own constructors use, each written once.

A part built in code (``ConnectionPool(url)``) behaves as the service started with no
settings at all. This module imports nothing, so the cache and the database layers can
read it without loading the settings machinery.
"""

MiB = 1024 * 1024

CACHE_PREFIX = "svc"
RESULT_TTL = 3600
"""Seconds a result stays in the shared cache."""
L1_MAX_BYTES = 64 * MiB
L1_TTL = 5.0
COMPRESSION_MIN_SIZE = 500
"""Smaller bodies are sent, and kept in the shared cache, uncompressed."""
REDIS_MAX_CONNECTIONS = 50
REDIS_TIMEOUT = 0.5

DB_POOL_SIZE = 20
DB_MAX_OVERFLOW = 10
DB_POOL_TIMEOUT = 30.0
DB_POOL_RECYCLE = 1800
DB_POOL_PRE_PING = True
DB_CONNECT_TIMEOUT = 5.0
DB_STATEMENT_TIMEOUT = 30.0
DB_LOCK_TIMEOUT = 5.0
DB_MAINTENANCE_TIMEOUT = 3600.0
