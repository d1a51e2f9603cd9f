"""Metrics of ``service serve --workers N``: every worker's series, whichever answers.

aioprometheus keeps its counters in the process, and behind one port a scrape reaches
one worker at random; prometheus_client's answer (a multiprocess mode over files) has
no aioprometheus equivalent. So the workers of one ``serve`` share a directory, made by
the command and named to them in SERVICE_WORKERS_DIR:

* each worker claims a slot (``worker-<i>.lock``, held with ``flock`` for its life, so
  a worker that dies frees it for the one uvicorn starts in its place) and serves its
  own metrics, in text format, on ``worker-<i>.sock``;
* the worker that gets the scrape asks every other slot's socket, and answers all of
  them, each sample labelled ``worker="<i>"``: ``sum without (worker) (...)`` in a
  query gives the totals. A slot whose worker does not answer within
  :data:`ASK_TIMEOUT` is left out of that scrape (it is being replaced).

The labels are slot numbers, not process ids, so a restarted worker continues its
predecessor's series (from zero: a counter reset, which ``rate()`` expects).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

DIRECTORY_VARIABLE = "SERVICE_WORKERS_DIR"
"""Set by ``service serve --workers N`` (N > 1) for its workers: the shared directory."""
COUNT_VARIABLE = "SERVICE_WORKERS"
"""Set with it: N."""
ASK_TIMEOUT = 1.0
"""Seconds a scrape waits for another worker's metrics."""
LABEL = "worker"
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?( .*)$")


class WorkerSet:
    """This worker's place among the workers of one ``serve``.

    ``async with WorkerSet.from_environ(render)`` claims a slot and serves ``render()``
    (this worker's own metrics, text format) on its socket; :meth:`exposition` gathers
    everyone's. ``from_environ`` returns None outside a ``serve --workers N``.
    """

    def __init__(self, directory: Path, count: int, render: Callable[[], bytes]) -> None:
        self.directory = directory
        self.count = count
        self.render = render
        self.index: int | None = None
        self._lock: IO[bytes] | None = None
        self._server: asyncio.Server | None = None

    @classmethod
    def from_environ(cls, render: Callable[[], bytes]) -> WorkerSet | None:
        directory = os.environ.get(DIRECTORY_VARIABLE)
        count = os.environ.get(COUNT_VARIABLE, "")
        if not directory or not count.isdigit():
            return None
        return cls(Path(directory), int(count), render)

    async def __aenter__(self) -> WorkerSet:
        self.index = self._claim()
        path = self._socket(self.index)
        path.unlink(missing_ok=True)  # left by the worker this one replaces
        self._server = await asyncio.start_unix_server(self._answer, path=str(path))
        logger.info("worker %d of %d", self.index, self.count)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._lock is not None:
            self._lock.close()  # releases the slot

    async def exposition(self) -> bytes:
        """Every worker's metrics that answered, each sample labelled with its slot."""
        assert self.index is not None, "use the WorkerSet as `async with`"
        others = [slot for slot in range(self.count) if slot != self.index]
        answers = await asyncio.gather(*(self._ask(slot) for slot in others))
        texts = {self.index: self.render()}
        texts.update((slot, text) for slot, text in zip(others, answers, strict=True) if text)
        return merge(dict(sorted(texts.items())))

    def _claim(self) -> int:
        for slot in range(self.count):
            lock = (self.directory / f"worker-{slot}.lock").open("ab")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self._lock = lock
            return slot
        raise RuntimeError(f"all {self.count} worker slots in {self.directory} are taken")

    def _socket(self, slot: int) -> Path:
        return self.directory / f"worker-{slot}.sock"

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(self.render())
            await writer.drain()
        writer.close()

    async def _ask(self, slot: int) -> bytes | None:
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(str(self._socket(slot)))
                try:
                    return await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return None  # not started yet, or being replaced


def merge(texts: dict[int, bytes]) -> bytes:
    """Prometheus text expositions of several workers as one: each family's HELP and
    TYPE once, then its samples from every worker, labelled ``worker="<slot>"``."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for slot, text in texts.items():
        family = ""
        for line in text.decode().splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    seen = headers.setdefault(family, [])
                    if not any(known.startswith(f"# {parts[1]} ") for known in seen):
                        seen.append(line)
                    samples.setdefault(family, [])
                continue
            match = _SAMPLE.match(line)
            if match is None:
                continue
            name, labels, rest = match.groups()
            inner = labels[1:-1] if labels else ""
            labelled = f'{LABEL}="{slot}"' + (f",{inner}" if inner else "")
            samples.setdefault(family, []).append(f"{name}{{{labelled}}}{rest}")
    lines: list[str] = []
    for family, family_samples in samples.items():
        lines += headers.get(family, [])
        lines += family_samples
    return ("\n".join(lines) + "\n").encode()


@contextlib.asynccontextmanager
async def worker_set(render: Callable[[], bytes]) -> AsyncIterator[WorkerSet | None]:
    """``WorkerSet.from_environ(render)``, entered; None outside ``serve --workers N``."""
    workers = WorkerSet.from_environ(render)
    if workers is None:
        yield None
        return
    async with workers:
        yield workers
