"""CPU time of a process and its children, read from ``/proc``: what a request costs
the server, steadier than req/s because nothing else on the machine enters it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU of ``pid`` and its children (uvicorn's workers, PostgreSQL's
    backends), so far: the live ones', and the ended ones' that ``pid`` has reaped (a
    backend closed during a run takes its CPU along otherwise)."""
    total = 0.0
    for candidate in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{candidate}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            if candidate == pid:
                total += (int(fields[13]) + int(fields[14])) / TICKS
    return total


def postmaster_of(backend: int) -> int | None:
    """The parent of the PostgreSQL backend ``backend`` (the postmaster), or None when
    no PostgreSQL process of that number runs here (the cluster is on another machine,
    or in a container of its own)."""
    try:
        if Path(f"/proc/{backend}/comm").read_text().strip() != "postgres":
            return None
        return int(Path(f"/proc/{backend}/stat").read_text().rpartition(")")[2].split()[1])
    except OSError:
        return None


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def wait_until_idle(
    pid: int, *, window: float = 0.1, busy: float = 0.05, limit: float = 10.0
) -> None:
    """Wait until ``pid`` (with its children) uses less than ``busy`` of a core over
    ``window`` seconds, for at most ``limit`` seconds: until the requests a load left
    in flight are answered, so the next load starts on an idle server."""
    deadline = time.monotonic() + limit
    used = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = cpu_seconds(pid)
        if now - used < busy * window:
            return
        used = now


def steal_and_total(cores: Collection[int] | None = None) -> tuple[int, int]:
    """Ticks so far of ``cores`` (every core when None), from ``/proc/stat``: those the
    hypervisor gave to other guests while these had work ("steal"), and all of them.
    On a shared virtual machine a load's throughput moves with the first: the host
    takes a core for bursts of a few percent to half of it."""
    steal = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if cores is not None and int(name[3:]) not in cores:
            continue
        ticks = [int(field) for field in rest.split()]
        steal += ticks[7]  # user nice system idle iowait irq softirq steal guest guest_nice
        total += sum(ticks[:8])  # guest time is already counted in user
    return steal, total
