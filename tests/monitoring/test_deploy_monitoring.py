"""The monitoring assets in deploy/: the rules pass promtool and their unit tests, every
alert is tested both ways, and the rules and the dashboard use only metric names the
service exposes.

promtool comes from Debian's ``prometheus`` package; without it these tests fail (CI
installs it). PyYAML is not a dependency, so the YAML is read with a few regular
expressions that rely on the layout of the files in deploy/prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALERTS = Path("deploy/prometheus/alerts.yml")
ALERTS_TEST = Path("deploy/prometheus/alerts_test.yml")
DASHBOARD = ROOT / "deploy" / "grafana" / "service-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

# The metrics contract of service/monitoring, plus the scrape's own `up`.
HISTOGRAMS = frozenset(
    {"request_duration_seconds", "db_pool_acquire_seconds", "db_query_duration_seconds"}
)
METRICS = frozenset(
    {
        "responses_total",
        "requests_in_progress",
        "cache_hits_total",
        "cache_misses_total",
        "cache_errors_total",
        "cache_breaker_state",
        "db_pool_size",
        "db_pool_max_overflow",
        "db_pool_checked_out",
        "db_pool_idle",
        "db_pool_overflow",
        "db_pool_waiting",
        "db_pool_timeouts_total",
        "compression_bytes_in_total",
        "compression_bytes_out_total",
        "build_info",
        "up",
    }
) | {name + suffix for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}

# PromQL words that may stand where a metric name could: keywords and number literals,
# and functions and aggregations (only allowed when a "(" follows).
KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "Inf", "inf", "NaN", "nan"}
)
FUNCTIONS = frozenset(
    {
        "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
        "quantile", "count_values", "group",
        "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max",
        "clamp_min", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta",
        "deriv", "exp", "floor", "histogram_quantile", "holt_winters", "hour", "idelta",
        "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10", "minute",
        "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort",
        "sort_desc", "sqrt", "time", "timestamp", "vector", "year",
        "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
        "count_over_time", "quantile_over_time", "stddev_over_time", "stdvar_over_time",
        "last_over_time", "present_over_time", "start", "end",
    }
)  # fmt: skip

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
_SELECTOR = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_CAMEL_CASE = re.compile(r"[A-Z][a-z0-9]*(?:[A-Z][a-z0-9]*)+")


def identifiers(expr: str) -> list[tuple[str, bool]]:
    """(name, followed by "(") for every identifier of ``expr`` outside label matchers,
    label lists, ranges and strings: the metric names, functions and keywords."""
    text = _STRING.sub('""', expr)  # label values ("/results/{analysis_id}", "$job")
    text = _GRAFANA_VARIABLE.sub(" ", text)  # $__rate_interval outside strings
    text = _SELECTOR.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    return [(match.group(1), bool(match.group(2))) for match in _IDENTIFIER.finditer(text)]


def unknown_names(expr: str, allowed: frozenset[str] = METRICS) -> list[str]:
    """The identifiers of ``expr`` that are neither PromQL nor metric names in ``allowed``."""
    return [
        name + ("(" if call else "")
        for name, call in identifiers(expr)
        if not (name in KEYWORDS or (name in FUNCTIONS if call else name in allowed))
    ]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in the repository root; fail (never skip) when it is not installed."""
    executable = shutil.which("promtool")
    assert executable is not None, (
        "promtool is not installed: run `apt-get install prometheus` (Debian's package "
        "ships promtool); CI installs it"
    )
    return subprocess.run(
        [executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


# ------------------------------------------------------------------- reading the YAML


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], start: int) -> list[str]:
    """The lines after ``lines[start]`` indented deeper than it (blank lines included)."""
    block = []
    for line in lines[start + 1 :]:
        if line.strip() and _indent(line) <= _indent(lines[start]):
            break
        block.append(line)
    return block


def _scalar(lines: list[str], key: str) -> str | None:
    """The value of the first ``key:`` among ``lines``: inline, or a | / >- block scalar."""
    for i, line in enumerate(lines):
        match = re.fullmatch(rf"\s*{key}:\s*(.*?)\s*", line)
        if match is None:
            continue
        value = match.group(1)
        if value in ("|", "|-", ">", ">-"):
            joiner = "\n" if value.startswith("|") else " "
            return joiner.join(part.strip() for part in _block(lines, i) if part.strip())
        return value.strip("\"'")
    return None


@dataclass(frozen=True)
class Rule:
    kind: str  # "alert" or "record"
    name: str
    lines: list[str]

    @property
    def expr(self) -> str:
        expr = _scalar(self.lines, "expr")
        assert expr, f"{self.name}: no expr"
        return expr

    def value(self, key: str) -> str | None:
        return _scalar(self.lines, key)


def rules() -> list[Rule]:
    lines = (ROOT / ALERTS).read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        match = re.fullmatch(r"\s*- (alert|record): (\S+)\s*", line)
        if match:
            found.append(Rule(match.group(1), match.group(2), _block(lines, i)))
    return found


def alerts() -> list[Rule]:
    return [rule for rule in rules() if rule.kind == "alert"]


def alert_tests() -> list[tuple[str, bool]]:
    """(alertname, expects it to fire) for every alert_rule_test entry of alerts_test.yml."""
    text = (ROOT / ALERTS_TEST).read_text()
    entries = []
    for chunk in re.split(r"(?m)^\s*- eval_time:", text)[1:]:
        name = re.search(r"(?m)^\s*alertname:\s*(\S+)\s*$", chunk)
        expected = re.search(r"(?m)^\s*exp_alerts:(.*)$", chunk)
        assert name is not None, f"an alert_rule_test entry without alertname:{chunk}"
        assert expected is not None, f"an alert_rule_test entry without exp_alerts:{chunk}"
        entries.append((name.group(1), expected.group(1).partition("#")[0].strip() != "[]"))
    return entries


# ------------------------------------------------------------------- reading the dashboard


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    queries = []
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", text)
            queries.append((f"variable {variable['name']}", match.group(1) if match else text))
    return queries


# ------------------------------------------------------------------- the tests


@pytest.mark.tools
def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.tools
def test_alerts_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    names = {rule.name for rule in alerts()}
    tests = alert_tests()
    assert len(names) >= 7, names
    assert not {name for name, _ in tests} - names, "tests of alerts that do not exist"
    assert not names - {name for name, fires in tests if fires}, "alerts never tested firing"
    assert not names - {name for name, fires in tests if not fires}, "alerts never tested quiet"


def test_alerts_are_named_labelled_and_annotated() -> None:
    for rule in alerts():
        assert _CAMEL_CASE.fullmatch(rule.name), rule.name
        assert rule.value("severity") in {"critical", "warning"}, rule.name
        assert rule.value("summary"), rule.name
        description = rule.value("description")
        assert description, rule.name
        assert len(description) > 100, f"{rule.name}: say what to look at and what to do"


def test_rules_use_only_contract_metrics() -> None:
    recorded = frozenset(rule.name for rule in rules() if rule.kind == "record")
    for rule in rules():
        assert unknown_names(rule.expr, METRICS | recorded) == [], rule.name


def test_dashboard_is_grafana_json_on_one_prometheus_variable() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    assert variables["instance"]["datasource"] == DATASOURCE
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert 'instance=~"$instance"' in target["expr"], panel["title"]


def test_alert_descriptions_name_existing_panels() -> None:
    titles = {panel["title"] for panel in panels(dashboard())}
    for rule in alerts():
        description = re.sub(r"\{\{.*?\}\}", "", rule.value("description") or "")
        for title in re.findall(r'"([^"]+)"', description):
            assert title in titles, f"{rule.name} points at a panel {title!r} that does not exist"


def test_dashboard_uses_only_contract_metrics() -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    for where, expr in queries:
        assert unknown_names(expr) == [], f"{where}: {expr}"
    # And it shows every metric of the contract (a histogram through any of its series).
    used = {name for _, expr in queries for name, _ in identifiers(expr)}
    series = {name + suffix for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
    assert METRICS - series - used == set()
    assert {name for name in HISTOGRAMS if not used & {name + "_bucket", name + "_sum"}} == set()


@pytest.mark.tools
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every query, with Grafana's variables replaced by plain values."""
    rules_file = tmp_path / "dashboard.yml"
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(dashboard_queries()):
        expr = re.sub(r"\$\{?__(?:rate_interval|interval|range)\}?", "5m", expr)
        expr = _GRAFANA_VARIABLE.sub("x", expr)
        lines += [f"      - record: dashboard_query_{i}", f"        expr: {json.dumps(expr)}"]
    rules_file.write_text("\n".join(lines) + "\n")
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_metric_name_check_catches_mistakes() -> None:
    good = (
        "histogram_quantile(0.99, sum by (job, le) (rate(request_duration_seconds_bucket"
        '{method="GET", endpoint="/results/{analysis_id}"}[$__rate_interval])))'
        " > 0.25 and on (job) up == 1e3"
    )
    assert unknown_names(good) == []
    assert unknown_names("rate(request_duration_secnds_bucket[5m])") == [
        "request_duration_secnds_bucket"
    ]
    assert unknown_names("sum(db_pool_waiting) / db_pool_max") == ["db_pool_max"]
    assert unknown_names("rated(up[5m])") == ["rated("]
    assert unknown_names("job:result_cache_hits:rate5m") == ["job:result_cache_hits:rate5m"]
