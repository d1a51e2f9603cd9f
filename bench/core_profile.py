"""Where one core's time goes during a run, from ``perf record -e cpu-clock`` samples.

The optimizer bench pins the cluster to one core; sampling that core while pgbench runs
and dividing by the transactions pgbench counted gives each function's core time per
transaction, on each side. Tps says that a side is slower; this says in which code,
and separates work a side adds from a run the machine slowed as a whole (every function
a little slower alike). ``cpu-clock`` is a software timer, so it works on virtual
machines that expose no hardware counters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

FREQUENCY = 2000
"""Samples per second: 0.5 ms apart, enough for the functions that take a few percent
of a run of seconds, without perf's own work showing on the core it samples."""

IDLE = "idle"
"""The name the profile gives the core's idle time (the kernel's swapper task)."""


@dataclass
class Profile:
    """Samples by function (as :func:`parse_report` names them) over some runs, and the
    transactions those runs completed."""

    samples: Counter[str] = field(default_factory=Counter)
    transactions: int = 0

    def add(self, samples: Counter[str], transactions: int) -> None:
        self.samples.update(samples)
        self.transactions += transactions

    def per_transaction(self) -> dict[str, float]:
        """Microseconds of the core per transaction, by function."""
        if not self.transactions:
            return {}
        scale = 1e6 / FREQUENCY / self.transactions
        return {name: count * scale for name, count in self.samples.items()}

    def busy(self) -> float:
        """Microseconds per transaction the core was not idle."""
        return sum(us for name, us in self.per_transaction().items() if name != IDLE)


def available() -> str | None:
    """None when ``perf record -e cpu-clock`` works here, else why not."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["perf", "record", "-q", "-e", "cpu-clock", "-o", f"{tmp}/p", "true"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            )
    except FileNotFoundError:
        return "perf is not installed (Debian: linux-perf)"
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or [f"exit {exc.returncode}"]
        return f"perf record failed: {last[0]}"
    return None


@contextmanager
def sampling(core: int, into: Path) -> Iterator[None]:
    """Sample ``core`` (every task on it, kernel included) into ``into`` while the
    block runs."""
    into.unlink(missing_ok=True)  # perf would keep it as .old, and the wait below pass
    recorder = subprocess.Popen(
        [
            "perf",
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            str(FREQUENCY),
            "-C",
            str(core),
            "-o",
            str(into),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # perf opens its counters before it writes the file's header: wait for that, so the
    # block's first moments are sampled too.
    deadline = time.monotonic() + 10
    while not (into.exists() and into.stat().st_size) and recorder.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    try:
        yield
    finally:
        if recorder.poll() is None:
            os.kill(recorder.pid, signal.SIGINT)  # perf writes its samples out on SIGINT
        _, errors = recorder.communicate(timeout=60)
        if recorder.returncode not in (0, -signal.SIGINT):
            raise RuntimeError(f"perf record exited with {recorder.returncode}: {errors}")


def read(path: Path) -> Counter[str]:
    """The samples of a ``perf record`` file by function, the kernel's idle loop as
    :data:`IDLE`."""
    out = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(path),
            "--stdio",
            "-q",
            "-n",
            "--no-children",
            "-g",
            "none",
            "--sort",
            "comm,sym",
            "--percent-limit",
            "0",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return parse_report(out)


def parse_report(text: str) -> Counter[str]:
    """``perf report -n --sort comm,sym`` lines, ``  12.34%  567  postgres  [k] symbol``
    (``[k]`` the kernel, ``[.]`` the process's own code), by ``postgres [k] symbol``."""
    samples: Counter[str] = Counter()
    for line in text.splitlines():
        fields = line.split(None, 4)
        if len(fields) < 5 or not fields[0].endswith("%") or not fields[1].isdigit():
            continue
        command, marker, symbol = fields[2], fields[3], fields[4].strip()
        name = IDLE if command == "swapper" else f"{command} {marker} {symbol}"
        samples[name] += int(fields[1])
    return samples
