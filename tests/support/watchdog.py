"""A watchdog for hung tests: after a deadline, show where every task waits, then fail.

All tests share one event loop, so a test whose await never returns would otherwise hold
the whole run until CI gives up, and say nothing about why. When a test outlives
its deadline, the watchdog prints, from inside the loop, the await chain of every
asyncio task (each coroutine frame down to the future it waits on) and the stack of
every thread, then cancels the test's own task: that test fails with the dump in its
captured output, and the run goes on. A fixture's setup or teardown that hangs cannot
be cancelled that way (its task is pytest-asyncio's): after the dump the run is
interrupted, so it ends failed instead of never.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import gc
import sys
import threading
import traceback
from collections.abc import Iterator
from types import CodeType, FrameType
from typing import Any


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
            # A future's __await__ iterator, or an async generator's asend: what they
            # hold says more (the future, or the generator to follow further).
            held = gc.get_referents(awaited)
            generator = next((o for o in held if getattr(o, "ag_frame", None)), None)
            if generator is not None:
                awaited = generator
                continue
            future = next((o for o in held if isinstance(o, asyncio.Future)), awaited)
            yield f"    waits on {future!r}"
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


def describe_tasks(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Every task of ``loop`` and its await chain."""
    tasks = asyncio.all_tasks(loop)
    lines = [f"--- {len(tasks)} asyncio tasks ---"]
    for task in tasks:
        lines.append(f"  {task.get_name()} {task.get_coro()!r}")
        lines.extend(await_chain(task))
    return lines


def describe_threads() -> list[str]:
    """Every thread's stack, innermost call last."""
    lines = ["--- threads ---"]
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        lines.append(f"  thread {names.get(ident, ident)}:")
        lines.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
    return lines


class Watchdog:
    """Times each phase of a test; ``loop`` is set once the session loop runs.

    ``dumps`` keeps what was printed before an interrupted run, for the terminal
    summary (the captured output of a phase that never ended is not shown)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dumps: list[str] = []

    @contextlib.contextmanager
    def watching(self, test: CodeType | None, seconds: float | None = None) -> Iterator[None]:
        """Watch one phase: the call of the test function ``test``, or (None) a fixture's
        setup or teardown. ``seconds`` lengthens the default deadline."""
        seconds = max(self.seconds, seconds or 0.0)
        timer = threading.Timer(seconds, self._fire, args=(test, seconds))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _fire(self, test: CodeType | None, seconds: float) -> None:
        header = f"*** a test ran longer than {seconds:g} s ***"
        loop = self.loop
        if loop is None or not loop.is_running():
            self._report([header, *describe_threads()], stop=True)
        else:
            loop.call_soon_threadsafe(self._dump_and_cancel, loop, test, header)

    def _dump_and_cancel(
        self, loop: asyncio.AbstractEventLoop, test: CodeType | None, header: str
    ) -> None:
        """In the loop: describe every task and thread; cancel the test's tasks, or, when
        none runs ``test`` (a fixture hangs), interrupt the run: nothing else ends it."""
        lines = [header, *describe_tasks(loop), *describe_threads()]
        hung = [t for t in asyncio.all_tasks(loop) if test is not None and _runs(t, test)]
        for task in hung:
            task.cancel("the test outlived its deadline (see the dump above)")
        self._report(lines, stop=not hung)

    def _report(self, lines: list[str], *, stop: bool) -> None:
        text = "\n".join(lines)
        if stop:
            self.dumps.append(text)
            _thread.interrupt_main()
        else:  # captured, and shown with the failed test
            print(f"\n{text}", file=sys.__stderr__ or sys.stderr, flush=True)
