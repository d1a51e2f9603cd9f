"""Merging the workers' expositions (``service serve --workers N``); the processes
themselves are tried in tests/service/test_workers.py."""

from __future__ import annotations

from service.monitoring.performance import PerformanceMonitor
from service.monitoring.workers import merge


def test_each_family_once_with_every_workers_samples_labelled() -> None:
    first = (
        b"# HELP hits Hits.\n# TYPE hits counter\n"
        b'hits{endpoint="/results/{analysis_id}",method="GET"} 3\n'
        b"# HELP up Up.\n# TYPE up gauge\nup 1\n"
    )
    second = (
        b"# HELP hits Hits.\n# TYPE hits counter\n"
        b'hits{endpoint="/results/{analysis_id}",method="GET"} 4\n'
        b"# HELP up Up.\n# TYPE up gauge\nup 1\n"
    )
    assert merge({0: first, 1: second}).decode().splitlines() == [
        "# HELP hits Hits.",
        "# TYPE hits counter",
        'hits{worker="0",endpoint="/results/{analysis_id}",method="GET"} 3',
        'hits{worker="1",endpoint="/results/{analysis_id}",method="GET"} 4',
        "# HELP up Up.",
        "# TYPE up gauge",
        'up{worker="0"} 1',
        'up{worker="1"} 1',
    ]


async def test_a_real_monitor_s_histograms_keep_their_buckets_under_their_family() -> None:
    monitor = PerformanceMonitor()
    monitor.track_request("GET", "/results/{analysis_id}", 0.002)
    merged = merge({0: monitor.text(), 1: monitor.text()}).decode()
    lines = merged.splitlines()
    start = lines.index("# TYPE request_duration_seconds histogram")
    family = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        family.append(line)
    assert family, merged
    assert all(line.startswith("request_duration_seconds_") for line in family), family
    assert sum('worker="0"' in line for line in family) == len(family) // 2
    assert merged.count("# TYPE request_duration_seconds histogram") == 1
