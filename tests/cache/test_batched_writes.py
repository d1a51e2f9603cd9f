"""Compare-and-sets made together reach Redis in one script call, each with its own outcome.

Against a private Redis, so that its command statistics count this test's calls alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from service.cache.backends import MAX_BATCH, RedisBackend
from tests.support.private_redis import PrivateRedis, private_redis


async def script_calls(backend: RedisBackend) -> int:
    """EVAL and EVALSHA calls the server has run so far."""
    stats = await backend.client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


@pytest.fixture
async def redis() -> AsyncIterator[PrivateRedis]:
    async with private_redis() as server:
        yield server


async def test_writes_made_together_go_in_one_call_each_compared_in_order(
    redis: PrivateRedis,
) -> None:
    backend = RedisBackend(redis.url)
    try:
        assert await backend.set_if_newer("k", b"4 four", 60) is True
        before = await script_calls(backend)
        outcomes = await asyncio.gather(
            backend.set_if_newer("k", b"3 older", 60),
            backend.set_if_newer("k", b"5 five", 60),
            backend.set_if_newer("k", b"5 five again", 60),  # the same version: renewed
            backend.set_if_newer("k", b"2 older", 60),
            *(backend.set_if_newer(f"other-{n}", b"1 one", None) for n in range(10)),
        )
        assert await script_calls(backend) == before + 1
        assert outcomes == [False, True, True, False, *[True] * 10]
        assert await backend.get("k") == b"5 five again"
        assert await backend.client.pttl("k") > 50_000
        assert await backend.client.ttl("other-3") == -1  # no TTL asked, none set
    finally:
        await backend.aclose()


async def test_a_burst_beyond_the_batch_size_takes_more_calls(redis: PrivateRedis) -> None:
    backend = RedisBackend(redis.url)
    try:
        assert await backend.set_if_newer("warm", b"1 one", 60) is True  # script loaded
        before = await script_calls(backend)
        count = MAX_BATCH * 2 + 1
        outcomes = await asyncio.gather(
            *(backend.set_if_newer(f"burst-{n}", b"1 one", 60) for n in range(count))
        )
        assert outcomes == [True] * count
        assert await script_calls(backend) - before == 3
    finally:
        await backend.aclose()


async def test_notices_go_with_their_writes(redis: PrivateRedis) -> None:
    backend = RedisBackend(redis.url)
    listener = RedisBackend(redis.url)
    pubsub = listener.client.pubsub()
    try:
        await pubsub.subscribe("notices")
        await pubsub.get_message(timeout=1)  # the subscription's confirmation
        await asyncio.gather(
            *(
                backend.set_if_newer(f"n-{n}", b"1 one", 60, ("notices", f"id-{n}"))
                for n in range(5)
            ),
            backend.set_if_newer("quiet", b"1 one", 60),
        )
        heard: list[bytes] = []
        while len(heard) < 5:
            message = await pubsub.get_message(timeout=2)
            assert message is not None, heard
            if message["type"] == "message":
                heard.append(message["data"])
        assert heard == [f"id-{n}".encode() for n in range(5)]
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await backend.aclose()


async def test_every_write_of_a_failed_call_gets_the_error(redis: PrivateRedis) -> None:
    backend = RedisBackend(redis.url, socket_timeout=0.5)
    try:
        assert await backend.set_if_newer("warm", b"1 one", 60) is True
        await redis.stop()
        outcomes = await asyncio.gather(
            *(backend.set_if_newer(f"lost-{n}", b"1 one", 60) for n in range(4)),
            return_exceptions=True,
        )
        assert all(isinstance(outcome, Exception) for outcome in outcomes), outcomes
    finally:
        await backend.aclose()


async def test_a_caller_that_gives_up_leaves_the_others_their_answers(redis: PrivateRedis) -> None:
    backend = RedisBackend(redis.url)
    try:
        impatient = asyncio.ensure_future(backend.set_if_newer("a", b"1 one", 60))
        patient = asyncio.ensure_future(backend.set_if_newer("b", b"1 one", 60))
        await asyncio.sleep(0)  # both made, their batch not sent yet
        impatient.cancel()
        assert await patient is True
        assert impatient.cancelled()
        assert await backend.get("a") == b"1 one"  # made before it gave up: it was sent
    finally:
        await backend.aclose()


async def test_writes_made_just_before_close_are_sent(redis: PrivateRedis) -> None:
    backend = RedisBackend(redis.url)
    write = asyncio.ensure_future(backend.set_if_newer("last", b"1 one", 60))
    await asyncio.sleep(0)  # the write is made and waits for its batch
    await backend.aclose()
    assert await write is True
    check = RedisBackend(redis.url)
    try:
        assert await check.get("last") == b"1 one"
    finally:
        await check.aclose()
