"""Tests of service.api: the HTTP contract, admin routes, the hit path, /openapi.json."""
