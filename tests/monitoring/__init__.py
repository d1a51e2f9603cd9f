"""Tests of service.monitoring: /metrics, and the Prometheus rules and dashboard in deploy/."""
