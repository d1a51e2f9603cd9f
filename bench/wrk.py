"""Running wrk and reading what it measured.

Every run goes through one Lua script that counts responses by status in each wrk
thread and prints them at the end, so a report can say how many of what came back
(wrk itself only says "Non-2xx or 3xx responses").
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "wrk is not installed: on Debian or Ubuntu, `apt-get install wrk`"

_LUA = """
local threads = {}
counts = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
  local method, body_file, path_prefix, spread = args[1], args[2], args[3], tonumber(args[4])
  if method and method ~= "-" then wrk.method = method end
  if body_file and body_file ~= "-" then
    local f = assert(io.open(body_file, "rb"))
    wrk.body = f:read("*a")
    f:close()
    wrk.headers["Content-Type"] = "application/json"
  end
  if path_prefix and path_prefix ~= "-" then
    request = function()
      return wrk.format(nil, path_prefix .. math.random(1, spread))
    end
  end
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    io.write(string.format("STATUS %d %d\\n", status, n))
  end
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


@dataclass(frozen=True, slots=True)
class Load:
    """What wrk sends: a path, or a PUT of a body file to ids spread over a prefix."""

    path: str
    method: str = "GET"
    body_file: Path | None = None
    spread_prefix: str | None = None
    spread: int = 1
    headers: tuple[str, ...] = ()


@dataclass(slots=True)
class WrkResult:
    """One wrk run."""

    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    statuses: dict[int, int] = field(default_factory=dict)
    socket_errors: int = 0
    requests: int = 0
    """Responses wrk counted over the run."""
    server_cpu_us: float | None = None
    """The server process's CPU (user and system) per response, in µs, when measured:
    steadier than req/s for small differences, since the other processes sharing the
    machine (wrk, PostgreSQL, Redis) do not enter it."""
    database_cpu_us: float | None = None
    """The same for the PostgreSQL cluster (the postmaster and every process it forked:
    backends, WAL writer, checkpointer, autovacuum)."""

    @property
    def unexpected(self) -> dict[int, int]:
        """Responses other than 2xx/3xx, by status."""
        return {s: n for s, n in sorted(self.statuses.items()) if not 200 <= s < 400}


def require_wrk() -> str:
    """The wrk executable, or SystemExit with how to install it."""
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit(INSTALL_HINT)
    return found


def run(
    base_url: str,
    load: Load,
    *,
    seconds: float,
    connections: int,
    script_dir: Path,
    core: int | None = 1,
    timeout_s: int = 30,
) -> WrkResult:
    """Run wrk once (pinned to ``core``) and parse its report."""
    script = script_dir / "count_statuses.lua"
    if not script.exists():
        script.write_text(_LUA)
    command = [
        require_wrk(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s",
        str(script),
    ]
    for header in load.headers:
        command += ["-H", header]
    command.append(base_url + load.path)
    command += [
        "--",
        load.method,
        str(load.body_file) if load.body_file else "-",
        load.spread_prefix or "-",
        str(load.spread),
    ]
    if core is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(core), *command]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    return parse(completed.stdout)


def parse(output: str) -> WrkResult:
    """Read requests/s, p50/p99 latency, statuses and socket errors from wrk's output."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if rate is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    statuses = {
        int(s): int(n) for s, n in re.findall(r"^STATUS (\d+) (\d+)$", output, re.MULTILINE)
    }
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    total = re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE)
    return WrkResult(
        requests_per_second=float(rate.group(1)),
        p50_ms=_percentile(output, "50"),
        p99_ms=_percentile(output, "99"),
        statuses=statuses,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        requests=int(total.group(1)) if total else 0,
    )


def _percentile(output: str, which: str) -> float | None:
    match = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    if match is None:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]
