"""A watchdog for hung tests: after a deadline, show where every task waits, then fail.

All tests share one event loop, so a test whose await never returns would otherwise hold
the whole run until CI gives up, and say nothing about why. When a test outlives
its deadline, the watchdog prints, from inside the loop, the await chain of every
asyncio task (each coroutine frame down to the future it waits on) and the stack of
every thread, then cancels the test's own task: that test fails with the dump in its
captured output, and the run goes on.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import sys
import threading
from collections.abc import Iterator
from types import CodeType, FrameType
from typing import Any, TextIO


def await_chain(task: asyncio.Task[Any]) -> Iterator[str]:
    """One line per frame the task is suspended in, outermost first, then what the
    innermost one waits on (usually a future)."""
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame: FrameType | None = next(
            (
                getattr(awaited, attribute)
                for attribute in ("cr_frame", "gi_frame", "ag_frame")
                if getattr(awaited, attribute, None) is not None
            ),
            None,
        )
        if frame is None:
            # A future's __await__ iterator says nothing; the future it holds does.
            held = [o for o in gc.get_referents(awaited) if isinstance(o, asyncio.Future)]
            yield f"    waits on {held[0] if held else awaited!r}"
            return
        code = frame.f_code
        yield f"    {code.co_filename}:{frame.f_lineno} in {code.co_name}"
        awaited = next(
            (
                getattr(awaited, attribute)
                for attribute in ("cr_await", "gi_yieldfrom", "ag_await")
                if getattr(awaited, attribute, None) is not None
            ),
            None,
        )


def _runs(task: asyncio.Task[Any], code: CodeType) -> bool:
    """Whether ``code`` (a test function's) is in the task's await chain."""
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None and frame.f_code is code:
            return True
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return False


def dump_and_cancel(loop: asyncio.AbstractEventLoop, test: CodeType, out: TextIO) -> None:
    """Print every task's await chain and every thread's stack; cancel the test's tasks.

    Runs in the loop (scheduled with ``call_soon_threadsafe``)."""
    tasks = asyncio.all_tasks(loop)
    print(f"\n--- hung test: {len(tasks)} asyncio tasks ---", file=out)
    for task in tasks:
        print(f"  {task.get_name()} {task.get_coro()!r}", file=out)
        for line in await_chain(task):
            print(line, file=out)
    print("--- threads ---", file=out, flush=True)
    faulthandler.dump_traceback(file=out, all_threads=True)
    for task in tasks:
        if _runs(task, test):
            task.cancel("the test outlived its deadline (see the dump above)")


class Watchdog:
    """Arms a timer around one test call; ``loop`` is set once the session loop runs."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.loop: asyncio.AbstractEventLoop | None = None

    def arm(self, test: CodeType) -> threading.Timer:
        timer = threading.Timer(self.seconds, self._fire, args=(test,))
        timer.daemon = True
        timer.start()
        return timer

    def _fire(self, test: CodeType) -> None:
        out = sys.__stderr__ or sys.stderr
        print(f"\n*** a test ran longer than {self.seconds:g} s ***", file=out, flush=True)
        loop = self.loop
        if loop is None or not loop.is_running():
            faulthandler.dump_traceback(file=out, all_threads=True)
            return
        loop.call_soon_threadsafe(dump_and_cancel, loop, test, out)
