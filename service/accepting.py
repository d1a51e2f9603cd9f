"""Accepting every connection that waits, not one per turn of the event loop.

libuv, under uvloop, accepts one connection each time round its loop (since libuv 1.45:
"unix: don't accept() connections in a loop"), and a loop busy with requests takes
long turns. So when many clients connect at once to a busy server, the last of them
waits for as many turns as there are clients before it is even accepted: with 64
connections opened at once on a server answering list pages, the last was accepted
half a second after the first, and its first request waited that long. asyncio's own
loop accepts up to its backlog at once.

:func:`accept_waiting` does the same for a server that just accepted a connection:
it accepts the others already waiting on that listening socket and hands each to the
event loop as a new connection of the same protocol. A protocol does not see the
listening socket, so it is found once per process among the process's descriptors
(the one listening on the connection's local address), and checked by inode before
every use: one closed at shutdown is never used again, and none is kept open.
Where the descriptors cannot be listed (no ``/proc``), nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

logger = logging.getLogger("service.server")

MOST_AT_ONCE: Final = 16
"""Connections accepted per connection the loop accepted. Each of those accepts as
many in turn, so a burst drains in a few turns, and several worker processes sharing
a listening socket each still take their part of it."""


@dataclass(frozen=True, slots=True)
class _Listener:
    fd: int
    inode: int
    family: int
    type: int


_listeners: dict[Any, _Listener | None] = {}
"""Per local address of an accepted connection: the socket listening for it."""
_WILDCARDS: Final = ("0.0.0.0", "::", "")  # noqa: S104 - compared with, never bound


def accept_waiting(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.BaseTransport,
    protocol_factory: Callable[[], asyncio.Protocol],
    ssl: Any = None,
) -> None:
    """Accept up to :data:`MOST_AT_ONCE` connections waiting on the socket that
    ``transport`` was accepted from, each with a new ``protocol_factory()``."""
    local = transport.get_extra_info("sockname")
    if not local or socket.getdefaulttimeout() is not None:
        # With a default timeout set, a socket object made around a descriptor would
        # put that descriptor in non-blocking mode: not one of ours to change.
        return
    listener = _listener(local)
    if listener is None:
        return
    if not _still_listening(listener):
        _listeners.pop(_key(local), None)  # closed (the server is stopping): forget it
        return
    sock = socket.socket(listener.family, listener.type, fileno=listener.fd)
    try:
        for _ in range(MOST_AT_ONCE):
            try:
                accepted, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # out of descriptors, say: libuv reports it next turn
                logger.debug("accepting a waiting connection failed: %r", exc)
                break
            accepted.setblocking(False)
            loop.create_task(_adopt(loop, accepted, protocol_factory, ssl))
    finally:
        sock.detach()  # the descriptor stays the server's


async def _adopt(
    loop: asyncio.AbstractEventLoop,
    accepted: socket.socket,
    protocol_factory: Callable[[], asyncio.Protocol],
    ssl: Any,
) -> None:
    try:
        await loop.connect_accepted_socket(protocol_factory, accepted, ssl=ssl)
    except Exception as exc:  # the client went away before it was set up, say
        logger.debug("a waiting connection could not be set up: %r", exc)
        with contextlib.suppress(OSError):
            accepted.close()


def _still_listening(listener: _Listener) -> bool:
    """Whether ``listener``'s descriptor is still that socket (not closed, nor reused)."""
    try:
        return os.fstat(listener.fd).st_ino == listener.inode
    except OSError:
        return False


def _key(local: Any) -> Any:
    """(host, port) of an Internet address, the path of a Unix one."""
    return tuple(local[:2]) if isinstance(local, tuple) else local


def _serves(listening: Any, local: Any) -> bool:
    """Whether a socket listening on ``listening`` accepted connections to ``local``:
    the same port on the same host or on a wildcard host, or the same path."""
    if isinstance(local, tuple):
        if not isinstance(listening, tuple):
            return False
        host, port = listening
        return bool(port == local[1] and (host == local[0] or host in _WILDCARDS))
    return bool(local) and listening == local


def _listener(local: Any) -> _Listener | None:
    key = _key(local)
    if key not in _listeners:
        _listeners[key] = _find_listener(key)
    return _listeners[key]


def _find_listener(local: Any) -> _Listener | None:
    """The socket of this process listening for connections to ``local``."""
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return None
    for fd in descriptors:
        try:
            status = os.fstat(fd)
        except OSError:
            continue
        if not stat.S_ISSOCK(status.st_mode):
            continue
        probe = socket.socket(fileno=fd)
        try:
            if probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and _serves(
                _key(probe.getsockname()), local
            ):
                return _Listener(fd, status.st_ino, probe.family, probe.type)
        except OSError:
            continue
        finally:
            probe.detach()
    return None
