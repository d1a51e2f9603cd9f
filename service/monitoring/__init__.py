"""Metrics: PerformanceMonitor (aioprometheus) and its timing middleware."""
