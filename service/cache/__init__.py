"""The cache: namespaced, TTL-bound, fail-open, over Redis or process memory; and the
ResultCache built on it."""

from service.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from service.cache.breaker import BreakerState, CircuitBreaker
from service.cache.local import LocalCache
from service.cache.manager import CacheManager, CacheStats
from service.cache.result_cache import CachedRead, ResultCache, ResultCacheStats

__all__ = [
    "BreakerState",
    "CacheBackend",
    "CacheManager",
    "CacheStats",
    "CachedRead",
    "CircuitBreaker",
    "LocalCache",
    "MemoryBackend",
    "RedisBackend",
    "ResultCache",
    "ResultCacheStats",
]
