"""The optimizer's report: typed, JSON-ready, and readable as a table.

A :class:`Report` is a list of :class:`Check` results. Every check says where its rule
and threshold come from (``source``), whether it could run at all (``ran``, with the
reason in ``note`` when not: an extension that is missing is said plainly, never
reported as "nothing found"), and what it found. Each :class:`Finding` carries the
exact statement to run and what running it is expected to save, so a person can act
on it; nothing in a report is ever executed by itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing worth acting on."""

    subject: str
    """What it is about: a table, an index, a query, a sequence (schema-qualified)."""
    detail: str
    """What was seen, in a sentence with the numbers."""
    recommendation: str
    """What to do about it, in words."""
    ddl: str | None = None
    """The exact statement to run, or None when the fix is not a statement."""
    saves: str | None = None
    """What acting is expected to save or prevent."""
    severity: Severity = "warning"
    data: dict[str, Any] = field(default_factory=dict)
    """The raw numbers behind the finding (JSON-ready)."""


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check."""

    name: str
    title: str
    source: str
    """Where the rule and its threshold come from."""
    ran: bool = True
    note: str | None = None
    """Why the check did not run, or what it covers."""
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True, slots=True)
class Report:
    """Everything :meth:`QueryOptimizer.report` found, at ``generated_at``."""

    database: str
    dialect: str
    server_version: str
    generated_at: datetime
    stats_reset_at: datetime | None
    """When the counters that usage checks read were last reset (None: never)."""
    checks: tuple[Check, ...]
    overview: dict[str, Any] = field(default_factory=dict)
    """Figures that are not findings: cache hit ratios, connections by state, ..."""

    @property
    def findings(self) -> list[tuple[Check, Finding]]:
        """Every finding, with the check that made it."""
        return [(check, finding) for check in self.checks for finding in check.findings]

    def check(self, name: str) -> Check:
        """The check called ``name``; KeyError if the report has none."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (datetimes become ISO 8601 strings)."""
        body: dict[str, Any] = _jsonable(asdict(self))
        return body

    def as_text(self) -> str:
        """The report as a readable table: one block per check, then the figures."""
        when = self.generated_at.isoformat(timespec="seconds")
        reset = (
            self.stats_reset_at.isoformat(timespec="seconds") if self.stats_reset_at else "never"
        )
        lines = [
            f"database {self.database} ({self.dialect} {self.server_version}) at {when}",
            f"usage statistics collected since: {reset}",
            "",
        ]
        for check in self.checks:
            if not check.ran:
                status = "not run"
            elif check.findings:
                status = f"{len(check.findings)} finding{'s' * (len(check.findings) != 1)}"
            else:
                status = "ok"
            lines.append(f"{check.title:<44} {status}")
            if check.note:
                lines.append(f"    note: {check.note}")
            for finding in check.findings:
                lines.append(f"  [{finding.severity}] {finding.subject}: {finding.detail}")
                lines.append(f"    -> {finding.recommendation}")
                if finding.ddl:
                    lines.append(f"       {finding.ddl}")
                if finding.saves:
                    lines.append(f"       saves: {finding.saves}")
        figures = {k: v for k, v in self.overview.items() if not isinstance(v, list)}
        if figures:
            lines += ["", "figures:"]
            width = max(map(len, figures))
            for name, value in figures.items():
                lines.append(f"  {name:<{width}}  {_figure(value)}")
        tables = self.overview.get("tables") or []
        if tables:
            width = max(len(row["table"]) for row in tables)
            lines += ["", f"  {'table':<{width}}  {'live':>10} {'dead':>8}  last vacuum / analyze"]
            for row in tables:
                vacuum = _latest(row.get("last_vacuum"), row.get("last_autovacuum"))
                analyze = _latest(row.get("last_analyze"), row.get("last_autoanalyze"))
                lines.append(
                    f"  {row['table']:<{width}}  {row['live']:>10} {row['dead']:>8}"
                    f"  {vacuum} / {analyze}"
                )
        return "\n".join(lines) + "\n"


def _latest(manual: datetime | None, auto: datetime | None) -> str:
    seen = [(when, kind) for when, kind in ((manual, ""), (auto, " (auto)")) if when]
    if not seen:
        return "never"
    when, kind = max(seen)
    return when.isoformat(timespec="seconds") + kind


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def pretty_bytes(size: int | float) -> str:
    """``1536`` -> ``1.5 kB`` (powers of 1024, as PostgreSQL's pg_size_pretty)."""
    amount = float(size)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(amount) < 1024 or unit == "TB":
            return f"{int(amount)} bytes" if unit == "bytes" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")
