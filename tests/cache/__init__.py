"""Tests of service.cache: the local tier, the manager, the breaker, ResultCache, Redis faults."""
