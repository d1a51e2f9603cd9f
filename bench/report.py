"""The Markdown tables of a benchmark run: scenarios, then the goals with verdicts."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from bench.wrk import WrkResult

NOT_BUILT = "not built"


def publish(text: str, output: Path) -> None:
    """A bench's report, printed and kept at ``output`` (its folder made if need be)."""
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)


@dataclass(slots=True)
class Scenario:
    """A measured (or not yet buildable) row of the report."""

    key: str
    title: str
    reference: str | None = None
    """Key of the scenario whose req/s this one is divided by."""
    built: bool = True
    note: str = ""
    runs: list[WrkResult] = field(default_factory=list)

    def rps(self) -> float:
        return statistics.median(r.requests_per_second for r in self.runs)

    def latency(self, attribute: str) -> float | None:
        values = [getattr(r, attribute) for r in self.runs if getattr(r, attribute) is not None]
        return statistics.median(values) if values else None

    def statuses(self) -> dict[int, int]:
        total: dict[int, int] = {}
        for run in self.runs:
            for status, n in run.statuses.items():
                total[status] = total.get(status, 0) + n
        return dict(sorted(total.items()))

    def socket_errors(self) -> int:
        return sum(r.socket_errors for r in self.runs)

    def server_cpu_us(self) -> float | None:
        """Median server CPU per response (µs), over the runs that measured it."""
        values = [r.server_cpu_us for r in self.runs if r.server_cpu_us is not None]
        return statistics.median(values) if values else None

    def database_cpu_us(self) -> float | None:
        """Median PostgreSQL CPU per response (µs), over the runs that measured it."""
        values = [r.database_cpu_us for r in self.runs if r.database_cpu_us is not None]
        return statistics.median(values) if values else None


@dataclass(frozen=True, slots=True)
class Goal:
    """A promise the table must show kept or missed, measured in this run."""

    text: str
    measured: str
    met: bool | None
    """None when the feature it measures is not built yet."""
    note: str = ""


def ratio(scenarios: dict[str, Scenario], key: str, reference: str) -> float | None:
    """req/s of ``key`` over req/s of ``reference``, when both were measured (and the
    reference answered at all).

    With one run of each per round (the bench interleaves them), the median of the
    rounds' own ratios: the machine's speed drifts between rounds, and a ratio taken
    within a round cancels most of that drift. Otherwise the ratio of the medians.
    """
    a, b = scenarios.get(key), scenarios.get(reference)
    if a is None or b is None or not (a.built and b.built and a.runs and b.runs):
        return None
    if len(a.runs) == len(b.runs):
        paired = [
            x.requests_per_second / y.requests_per_second
            for x, y in zip(a.runs, b.runs, strict=True)
            if y.requests_per_second > 0
        ]
        return statistics.median(paired) if paired else None
    return a.rps() / b.rps() if b.rps() > 0 else None


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def scenario_table(scenarios: dict[str, Scenario]) -> str:
    lines = [
        "| scenario | req/s (median) | spread (min-max) | p50 ms | p99 ms | server CPU µs/req | "
        "PostgreSQL CPU µs/req | ratio | responses by status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s in scenarios.values():
        if not s.built or not s.runs:
            lines.append(f"| {s.title} | {NOT_BUILT} | | | | | | | {s.note} |")
            continue
        rates = [r.requests_per_second for r in s.runs]
        r = ratio(scenarios, s.key, s.reference) if s.reference else None
        against = ""
        if r is not None and s.reference is not None:
            against = f"{r:.2f} of {s.reference}"
        statuses = ", ".join(f"{k}: {v:,}" for k, v in s.statuses().items())
        if s.socket_errors():
            statuses += f"; socket errors: {s.socket_errors():,}"
        lines.append(
            f"| {s.title} | {s.rps():,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | "
            f"{_ms(s.latency('p50_ms'))} | {_ms(s.latency('p99_ms'))} | {_us(s.server_cpu_us())} | "
            f"{_us(s.database_cpu_us())} | {against} | {statuses} |"
        )
    return "\n".join(lines)


def goal_table(goals: list[Goal]) -> str:
    lines = ["| goal | measured | verdict |", "|---|---:|---|"]
    for goal in goals:
        if goal.met is None:
            verdict = f"{NOT_BUILT}{': ' + goal.note if goal.note else ''}"
        else:
            verdict = "met" if goal.met else f"**missed**{': ' + goal.note if goal.note else ''}"
        lines.append(f"| {goal.text} | {goal.measured} | {verdict} |")
    return "\n".join(lines)
