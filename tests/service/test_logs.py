"""Logging: rate-limited warnings and the JSON format."""

from __future__ import annotations

import json
import logging

import pytest

from service.logs import JSONFormatter, RateLimitedLog


def test_rate_limited_log_lets_one_through_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = RateLimitedLog(logging.getLogger("test.rate"), interval=3600)
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        for n in range(100):
            log.warning("outage", "request %d failed", n)
        log.warning("other", "another kind")
    assert [r.getMessage() for r in caplog.records] == ["request 0 failed", "another kind"]


def test_rate_limited_log_reports_suppressed_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    log = RateLimitedLog(logging.getLogger("test.rate2"), interval=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.rate2"):
        log.warning("k", "first")
        now[0] += 5
        log.warning("k", "second")
        now[0] += 6
        log.warning("k", "third")
    assert [r.getMessage() for r in caplog.records] == [
        "first",
        "third (1 more like this suppressed)",
    ]


def test_json_formatter_writes_one_object_per_record() -> None:
    record = logging.LogRecord("svc", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    entry = json.loads(JSONFormatter().format(record))
    assert entry["message"] == "hello world"
    assert entry["level"] == "info"
    assert entry["logger"] == "svc"
