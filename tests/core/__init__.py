"""Tests of service.core: content-coding negotiation and the compression middleware."""
