"""The cache: namespaced, TTL-bound, fail-open, over Redis or process memory."""

from service.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from service.cache.breaker import BreakerState, CircuitBreaker
from service.cache.manager import CacheManager, CacheStats

__all__ = [
    "BreakerState",
    "CacheBackend",
    "CacheManager",
    "CacheStats",
    "CircuitBreaker",
    "MemoryBackend",
    "RedisBackend",
]
