"""
L{read}: a blocking call for scripts, on a reactor running in a background thread.

Twisted's reactor cannot be restarted, so C{task.react} could serve one call per process.
Instead crochet (C{crochet.setup()}) starts the global reactor in a thread of its own on
the first call, and stops it when the main thread ends; every call waits for its result
there, so C{read} may be called any number of times. crochet also hands Twisted's log
messages to the standard C{logging} module. It must not be called from the reactor's
own thread (from Twisted code: use L{StreamClient} there); a program whose reactor
already runs in another thread is served by that reactor.
"""

from __future__ import annotations

import contextlib
from typing import Any

import crochet
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.threadable import isInIOThread

from streamd.client.client import StreamClient


def _reactor():
    """The global reactor, running in a thread: crochet's, or the program's own."""
    from twisted.internet import reactor

    if reactor.running:
        # Already running (the program's own thread, or crochet's): crochet needs only
        # its bookkeeping, and refuses that once set up, which is fine.
        with contextlib.suppress(RuntimeError):
            crochet.no_setup()
    else:
        crochet.setup()
    return reactor


def read(url: str, limit: int, timeout: float | None = 60.0, **options: Any) -> list[Any]:
    """
    Read C{limit} records from the stream at C{url} and return their data (blocking).

    C{options} are L{StreamClient}'s (C{token}, C{sse}, C{headers}, C{params}, ...).
    Raises L{ClientError} on a 4xx, L{GaveUp} after C{max_retries}; after C{timeout}
    seconds the read stops and returns the data of the records read so far.
    """
    reactor = _reactor()
    if reactor.running and isInIOThread():
        raise RuntimeError("streamd.client.read() blocks: call it outside the reactor thread")
    # The timeout runs in the reactor (it cancels the run there); the wait here is
    # unbounded so that it never gives up before the run has ended.
    # crochet's stubs know neither that a coroutine's EventualResult waits for what it
    # returns, nor that wait(None) waits for ever (both as crochet's code does).
    eventual = _read(reactor, url, limit, timeout, options)
    return eventual.wait(None)  # type: ignore[return-value, arg-type]


@crochet.run_in_reactor
async def _read(reactor, url: str, limit: int, timeout: float | None,
                options: dict[str, Any]) -> list[Any]:
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
