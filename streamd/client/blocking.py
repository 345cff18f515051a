"""
L{read}: a blocking call for scripts, on a reactor running in a background thread.

Twisted's reactor cannot be restarted, so C{task.react} could serve one call per process.
Instead the first call starts the global reactor in a daemon thread (without signal
handlers) and every call waits for its result there, so C{read} may be called any number
of times. It must not be called from the reactor's own thread (from Twisted code: use
L{StreamClient} there); a program whose reactor already runs in another thread is
served by that reactor.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import blockingCallFromThread
from twisted.python.threadable import isInIOThread

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _reactor():
    global _thread
    from twisted.internet import reactor

    with _lock:
        if not reactor.running and _thread is None:
            _thread = threading.Thread(
                target=reactor.run, kwargs={"installSignalHandlers": False},
                name="streamd-client-reactor", daemon=True)
            _thread.start()
    return reactor


def read(url: str, limit: int, timeout: float | None = 60.0, **options: Any) -> list[Any]:
    """
    Read C{limit} records from the stream at C{url} and return their data (blocking).

    C{options} are L{StreamClient}'s (C{token}, C{sse}, C{headers}, C{params}, ...).
    Raises L{ClientError} on a 4xx, C{TimeoutError} after C{timeout} seconds.
    """
    from streamd.client.client import StreamClient

    reactor = _reactor()
    if reactor.running and isInIOThread():
        raise RuntimeError("streamd.client.read() blocks: call it outside the reactor thread")

    async def run() -> list[Any]:
        client = StreamClient(url, reactor=reactor, **options)
        got: list[Any] = []

        async def consume() -> None:
            # Take each record as it comes: on an ack=client stream, a run ends only
            # once its records are taken (and so acknowledged).
            while True:
                got.append((await client.queue.get()).data)

        consumer = Deferred.fromCoroutine(consume())
        consumer.addErrback(lambda f: f.trap(CancelledError))
        d = client.start(limit=limit)
        if timeout is not None:
            d.addTimeout(timeout, reactor)
        try:
            await d
        finally:
            consumer.cancel()
        return got

    return blockingCallFromThread(reactor, lambda: Deferred.fromCoroutine(run()))
