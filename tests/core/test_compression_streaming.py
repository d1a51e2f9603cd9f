"""CompressionMiddleware on streamed responses: each chunk decodable on arrival, event
streams flushed event by event (also through a real uvicorn), big bodies in worker threads,
the zstd window; and the compressor's life: counted while a stream runs, freed when the
app fails, the client goes away or the task is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
import zstandard
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Message

from service.core.codings import CODINGS
from service.core.compression import CompressionMiddleware, CompressionStats
from tests.helpers import (
    VARY,
    Exchange,
    StreamDecoder,
    call,
    decode,
    document,
    json_body,
    json_response,
    serving,
    streaming,
)

# Streaming.


STREAM_CHUNKS = [
    b'{"rows": [',
    json.dumps({"id": 1, "text": "first row " * 40}).encode(),
    b", " + json.dumps({"id": 2, "text": "second row " * 400}).encode(),
    b", " + os.urandom(300).hex().encode(),
    b"]}",
]


@pytest.mark.parametrize("coding", CODINGS)
async def test_each_streamed_chunk_decodes_on_arrival(coding: str) -> None:
    """One encoded message per chunk, each decodable to exactly that chunk when it arrives;
    the last one ends the stream. Content-Length (set by the app) is removed."""
    total = str(sum(map(len, STREAM_CHUNKS)))
    app = streaming(STREAM_CHUNKS, headers={"content-length": total, "etag": '"3"'})
    sent = await call(CompressionMiddleware(app), coding)
    assert sent.headers == sorted(
        [
            ("content-type", "application/json"),
            ("content-encoding", coding),
            ("etag", f'"3-{coding}"'),
            VARY,
        ]
    )
    more = [m["more_body"] for m in sent.messages[1:]]
    assert more == [True] * len(STREAM_CHUNKS) + [False]
    decoder = StreamDecoder(coding)
    for chunk, encoded in zip(STREAM_CHUNKS, sent.bodies, strict=False):
        assert encoded, "every chunk is flushed"
        assert decoder.feed(encoded) == chunk
        assert not decoder.finished
    assert decoder.feed(sent.bodies[-1]) == b""
    assert decoder.finished


async def test_empty_chunks_in_a_stream_send_nothing() -> None:
    """An empty non-final chunk is skipped rather than sent as an empty write."""
    chunks = [json_body(600), b"", json_body(600)]
    sent = await call(CompressionMiddleware(streaming(chunks)), "gzip")
    assert len(sent.bodies) == 3
    assert all(sent.bodies)
    assert decode("gzip", sent.body) == chunks[0] + chunks[2]


def sse_app(gates: Sequence[asyncio.Event], events: Sequence[bytes]) -> StreamingResponse:
    """An event stream that waits for ``gates[i]`` before sending ``events[i]``."""

    async def generate() -> AsyncIterator[bytes]:
        for gate, event in zip(gates, events, strict=True):
            await gate.wait()
            yield event

    return StreamingResponse(generate(), media_type="text/event-stream")


EVENTS = [b"event: tick\ndata: 1\n\n", b'data: {"two": 2}\n\n', b"data: three\n\n"]


@pytest.mark.parametrize("coding", CODINGS)
async def test_event_stream_headers_at_once_then_each_event(coding: str) -> None:
    """The headers go out before any event exists, and each event is sent (decodable)
    before the next is produced: the next gate opens only once the previous arrived."""
    gates = [asyncio.Event() for _ in EVENTS]
    middleware = CompressionMiddleware(sse_app(gates, EVENTS))
    queue: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(call(middleware, coding, send=queue.put))
    try:
        async with asyncio.timeout(5):
            head = Exchange([await queue.get()])
            assert head.header("content-encoding") == coding
            assert head.header("content-type") == "text/event-stream; charset=utf-8"
            assert head.header("content-length") is None
            decoder = StreamDecoder(coding)
            for gate, event in zip(gates, EVENTS, strict=True):
                assert queue.empty()
                gate.set()
                message = await queue.get()
                assert message["more_body"] is True
                assert decoder.feed(message["body"]) == event
            last = await queue.get()
            assert last["more_body"] is False
            assert decoder.feed(last["body"]) == b""
            assert decoder.finished
            await task
    finally:
        task.cancel()


@pytest.mark.parametrize("coding", CODINGS)
async def test_event_stream_over_a_real_server_decodes_event_by_event(coding: str) -> None:
    """Through uvicorn and TCP: each event can be decoded from the bytes received so far,
    while the server is still waiting to produce the next one."""
    gates = [asyncio.Event() for _ in EVENTS]
    app = CompressionMiddleware(sse_app(gates, EVENTS))
    # The headers arrive while the first event is still held back by its gate.
    async with (
        serving(app) as url,
        httpx.AsyncClient(timeout=5) as client,
        client.stream("GET", url, headers={"accept-encoding": coding}) as response,
    ):
        assert response.headers["content-encoding"] == coding
        assert response.headers["vary"] == "Accept-Encoding"
        assert "content-length" not in response.headers
        decoder = StreamDecoder(coding)
        raw = response.aiter_raw()
        async with asyncio.timeout(5):
            for gate, event in zip(gates, EVENTS, strict=True):
                gate.set()
                received = b""
                while len(received) < len(event):
                    received += decoder.feed(await anext(raw))
                assert received == event
            rest = b"".join([decoder.feed(chunk) async for chunk in raw])
        assert rest == b""
        assert decoder.finished


@pytest.mark.parametrize("coding", CODINGS)
async def test_large_bodies_compressed_in_worker_threads_are_correct(coding: str) -> None:
    """``thread_minimum_size=1024``: a 200 KB body, whole or in 50 KB chunks, decodes exactly.

    (Which thread ran the compressor is not observable without patching; only the
    result is checked.)
    """
    data = document(5000)[: 200 * 1024]
    assert len(data) == 200 * 1024
    whole = await call(CompressionMiddleware(json_response(data), thread_minimum_size=1024), coding)
    assert whole.header("content-length") == str(len(whole.body))
    assert decode(coding, whole.body) == data
    chunks = [data[i : i + 50 * 1024] for i in range(0, len(data), 50 * 1024)]
    middleware = CompressionMiddleware(streaming(chunks), thread_minimum_size=1024)
    streamed = await call(middleware, coding)
    decoder = StreamDecoder(coding)
    assert [decoder.feed(b) for b in streamed.bodies] == [*chunks, b""]
    assert decoder.finished


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_zstd_window_stays_within_8_mb_at_level_19(streamed: bool) -> None:
    """RFC 9659: a zstd content coding needs no window over 8 MB, even at level 19."""
    block = document(2000)
    data = (block * (10 * 1024 * 1024 // len(block) + 1))[: 10 * 1024 * 1024]
    if streamed:
        app: ASGIApp = streaming(
            [data[i : i + 1024 * 1024] for i in range(0, len(data), 1024 * 1024)]
        )
    else:
        app = json_response(data)
    sent = await call(CompressionMiddleware(app, levels={"zstd": 19}), "zstd")
    assert sent.header("content-encoding") == "zstd"
    assert zstandard.get_frame_parameters(sent.bodies[0]).window_size <= 8 * 1024 * 1024
    assert decode("zstd", sent.body) == data


# Resources and statistics.


@pytest.mark.parametrize("coding", CODINGS)
async def test_stream_counts_and_frees_its_compressor(coding: str) -> None:
    """A normal stream: one open compressor while it runs, none after; bytes counted."""
    stats = CompressionStats()
    observed: list[int] = []

    async def generate() -> AsyncIterator[bytes]:
        for chunk in STREAM_CHUNKS:
            observed.append(stats.streams_open)
            yield chunk

    app = StreamingResponse(generate(), media_type="application/json")
    sent = await call(CompressionMiddleware(app, stats=stats), coding)
    assert observed[1:] == [1] * (len(STREAM_CHUNKS) - 1)
    assert stats.streams_open == 0
    assert stats.responses == {coding: 1}
    assert stats.bytes_in == {coding: sum(map(len, STREAM_CHUNKS))}
    assert stats.bytes_out == {coding: len(sent.body)}


async def test_whole_bodies_are_counted_by_coding() -> None:
    """Responses, bytes in and out per coding; identity responses are not counted."""
    stats = CompressionStats()
    data = document(100)
    middleware = CompressionMiddleware(json_response(data), stats=stats)
    sizes: dict[str, int] = {}
    for coding in ("br", "gzip", "gzip"):
        sizes[coding] = len((await call(middleware, coding)).body)
    await call(middleware, "identity")
    assert stats.responses == {"br": 1, "gzip": 2}
    assert stats.bytes_in == {"br": len(data), "gzip": 2 * len(data)}
    assert stats.bytes_out == {"br": sizes["br"], "gzip": 2 * sizes["gzip"]}
    assert stats.streams_open == 0
    assert stats.as_dict()["responses"] == {"br": 1, "gzip": 2}


@pytest.mark.parametrize("coding", CODINGS)
async def test_app_failing_mid_stream_frees_the_compressor(coding: str) -> None:
    """The app raises after one chunk: the error propagates, the compressor is dropped."""
    stats = CompressionStats()

    async def generate() -> AsyncIterator[bytes]:
        yield json_body(1000)
        assert stats.streams_open == 1
        raise RuntimeError("the database went away")

    app = StreamingResponse(generate(), media_type="application/json")
    with pytest.raises(RuntimeError, match="database went away"):
        await call(CompressionMiddleware(app, stats=stats), coding)
    assert stats.streams_open == 0


@pytest.mark.parametrize("coding", CODINGS)
async def test_client_disconnect_mid_stream_frees_the_compressor(coding: str) -> None:
    """The server's send raises OSError (the peer is gone): the compressor is dropped."""
    stats = CompressionStats()
    sends = 0

    async def broken_pipe(message: Message) -> None:
        nonlocal sends
        sends += 1
        if sends == 3:  # start, first chunk, then the connection is gone
            assert stats.streams_open == 1
            raise BrokenPipeError("peer closed")

    app = streaming([json_body(1000)] * 5)
    with pytest.raises(ClientDisconnect):
        await call(CompressionMiddleware(app, stats=stats), coding, send=broken_pipe)
    assert stats.streams_open == 0


@pytest.mark.parametrize("coding", CODINGS)
async def test_cancelled_app_frees_the_compressor(coding: str) -> None:
    """The request task cancelled while the app waits between chunks."""
    stats = CompressionStats()
    gates = [asyncio.Event(), asyncio.Event()]
    app = sse_app(gates, EVENTS[:2])
    queue: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(
        call(CompressionMiddleware(app, stats=stats), coding, send=queue.put)
    )
    gates[0].set()
    async with asyncio.timeout(5):
        await queue.get()  # start
        await queue.get()  # the first event
    assert stats.streams_open == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stats.streams_open == 0
