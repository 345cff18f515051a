"""
A small HTTP proxy in front of moto, in the test's reactor: it counts the SQS calls
streamd makes (by operation and queue) and can answer some with a 5xx instead of
forwarding them. Point a stream's C{endpoint_url} at C{proxy.url}.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

_HOP = {b"host", b"content-length", b"connection", b"transfer-encoding"}


class SQSProxy(Resource):
    """
    @ivar calls: requests seen, by operation and by C{(operation, queue_url)}.
    @ivar faults: operation -> how many of its next requests get a 500.
    @ivar injected: how many 500s were answered.
    @ivar waiters: C{(predicate, Deferred)}: fired when a request makes it true.
    """

    isLeaf = True

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.calls: Counter = Counter()
        self.faults: Counter = Counter()
        self.injected = 0
        self.waiters: list = []
        self.url = ""

    def render_POST(self, request):
        body = request.content.read()
        target = (request.getHeader(b"x-amz-target") or b"").decode()
        op = target.split(".")[-1]
        queue = json.loads(body or b"{}").get("QueueUrl")
        self.calls[op] += 1
        self.calls[op, queue] += 1
        for pred, d in list(self.waiters):
            if pred(self.calls):
                self.waiters.remove((pred, d))
                d.callback(None)
        if self.faults[op] > 0:
            self.faults[op] -= 1
            self.injected += 1
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"application/x-amz-json-1.0")
            return b'{"__type": "com.amazonaws.sqs#InternalError", "message": "injected"}'
        headers = {k: v for k, v in request.requestHeaders.getAllRawHeaders()
                   if k.lower() not in _HOP}
        gone: list[bool] = []  # the caller hung up (a cancelled long poll)
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = treq.post(self.upstream + "/", data=body, headers=headers)
        d.addCallback(self._relay, request, gone)
        d.addErrback(self._broken, request, gone)
        return NOT_DONE_YET

    async def _relay_async(self, response, request, gone):
        content = await treq.content(response)
        if gone:
            return
        request.setResponseCode(response.code)
        for k, v in response.headers.getAllRawHeaders():
            if k.lower() not in _HOP:
                request.responseHeaders.setRawHeaders(k, v)
        request.write(content)
        request.finish()

    def _relay(self, response, request, gone):
        return defer.ensureDeferred(self._relay_async(response, request, gone))

    def _broken(self, failure, request, gone):
        if not gone:
            request.setResponseCode(502)
            request.finish()

    def when(self, predicate) -> defer.Deferred:
        """Fires at the first request after which C{predicate(calls)} holds."""
        d = defer.Deferred()
        if predicate(self.calls):
            d.callback(None)
        else:
            self.waiters.append((predicate, d))
        return d


@pytest_twisted.async_yield_fixture
async def sqs_proxy(moto):
    proxy = SQSProxy(moto.endpoint)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(proxy))
    proxy.url = f"http://127.0.0.1:{port.getHost().port}"
    yield proxy
    await port.stopListening()
