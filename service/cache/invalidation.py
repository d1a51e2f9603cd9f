"""Cross-replica L1 invalidation: a Redis pub/sub listener that never trusts a gap.

Every write publishes the id it changed; each replica's listener drops that id from its
in-process tier. A message published while a listener is not connected is lost, so
whenever the listener (re)subscribes it reports a gap and the owner clears its whole
in-process tier: after a reconnect nothing stale survives, and while disconnected the
tier's own TTL (L1_TTL) bounds how long an entry can be served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError, RedisClusterException, RedisError

from service.cache.backends import RedisBackend, lost_connection
from service.logs import RateLimitedLog

logger = logging.getLogger(__name__)

ALL = "*"
"""The message that means "drop everything" (never a valid analysis_id)."""


class InvalidationListener:
    """Runs one subscriber task; ``on_message(text)`` per message, ``on_gap()`` per (re)connect.

    A silent connection is not trusted either: with no traffic for ``ping_interval`` the
    listener pings, and with nothing heard for ``dead_after`` it reconnects.
    """

    def __init__(
        self,
        backend: RedisBackend,
        channel: str,
        on_message: Callable[[str], None],
        on_gap: Callable[[], None],
        *,
        ping_interval: float = 5.0,
        dead_after: float = 15.0,
        max_backoff: float = 2.0,
    ) -> None:
        self.channel = channel
        self._backend = backend
        self._on_message = on_message
        self._on_gap = on_gap
        self._ping_interval = ping_interval
        self._dead_after = dead_after
        self._max_backoff = max_backoff
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = RateLimitedLog(logger, interval=5.0)
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"listen {self.channel}")

    async def wait_connected(self, within: float) -> bool:
        """True once subscribed (for start-up and tests); False after ``within`` s."""
        try:
            async with asyncio.timeout(within):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Stop listening. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            connects = self.reconnects
            try:
                await self._listen()
            except (
                RedisError,
                RedisClusterException,
                OSError,
                TimeoutError,
                AttributeError,
                TypeError,
            ) as exc:
                if isinstance(exc, AttributeError | TypeError) and not lost_connection(exc):
                    raise
                self._log.warning(
                    "lost", "cache invalidation listener disconnected, retrying: %r", exc
                )
            self._connected.clear()
            backoff = 0.05 if self.reconnects != connects else min(backoff * 2, self._max_backoff)
            await asyncio.sleep(backoff)

    async def _listen(self) -> None:
        subscriptions = await self._backend.subscriptions(self.channel)
        followed: list[PubSub] = []
        try:
            for subscription in subscriptions:
                pubsub = subscription.client.pubsub()
                followed.append(pubsub)
                # One command per channel: SSUBSCRIBE takes the channels of one slot.
                for channel in subscription.channels:
                    if subscription.sharded:
                        await pubsub.ssubscribe(channel)
                    else:
                        await pubsub.subscribe(channel)
            if self.reconnects:
                logger.info("cache invalidation listener reconnected")
            self.reconnects += 1
            self._on_gap()
            self._connected.set()
            await _first_to_end([self._follow(pubsub) for pubsub in followed])
        finally:
            self._connected.clear()
            for pubsub in followed:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            for subscription in subscriptions:
                with contextlib.suppress(RedisError, OSError):
                    await subscription.client.aclose()

    async def _follow(self, pubsub: PubSub) -> None:
        """Read one connection's messages until it fails, goes silent, or a subscription
        ends (on a cluster, a slot moved to another master): then the caller reconnects.

        The read waits with no timeout: a timed read costs every message a timer, a
        quarter of what receiving one costs (measured), and every replica receives every
        write's notice, its own included. A second task watches the silence: it pings
        after ``ping_interval`` with nothing heard, and gives up after ``dead_after``.
        """
        heard = time.monotonic()

        async def read() -> None:
            nonlocal heard
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                heard = time.monotonic()
                kind = message["type"]
                if kind in ("message", "smessage"):
                    self._on_message(message["data"].decode())
                elif kind in ("unsubscribe", "sunsubscribe"):
                    raise ConnectionError(f"subscription to {message['channel']!r} ended")

        async def watch() -> None:
            tick = min(1.0, self._ping_interval / 2)
            pinged = time.monotonic()
            while True:
                await asyncio.sleep(tick)
                now = time.monotonic()
                if now - heard > self._dead_after:
                    raise TimeoutError(f"no reply on {self.channel} for {self._dead_after:g} s")
                if now - max(heard, pinged) > self._ping_interval:
                    pinged = now
                    await pubsub.ping()

        await _first_to_end([read(), watch()])


async def _first_to_end(work: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``work`` concurrently until one ends (they end only by raising); cancel the
    rest and raise what it raised."""
    if len(work) == 1:
        await work[0]
        return
    tasks = [asyncio.create_task(one) for one in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
