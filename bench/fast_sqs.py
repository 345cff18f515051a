"""
A minimal in-memory SQS endpoint (AWS JSON 1.0 protocol) for benchmarks.

moto's SQS scans every message of a queue on each call, so its cost grows with the queue's
depth (at 2,500 queued messages one receive+delete took about 3 s here): with 10,000
messages queued it measures moto, not the client. This server keeps each call O(batch):
standard queues only, long polling, visibility timeouts, receive counts; no signature
checks, no FIFO, no attributes beyond ApproximateReceiveCount and SentTimestamp.

    python bench/fast_sqs.py PORT       # prints "listening on PORT" when ready
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import sys
import time
from collections import deque

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class Queue:
    def __init__(self, url: str) -> None:
        self.url = url
        self.visible: deque[str] = deque()
        self.bodies: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.sent_at: dict[str, str] = {}
        self.in_flight: dict[str, tuple[str, float]] = {}  # receipt -> (id, deadline)
        self.deadlines: list[tuple[float, str]] = []
        self.waiting: deque = deque()

    def expire(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, receipt = heapq.heappop(self.deadlines)
            entry = self.in_flight.get(receipt)
            if entry is not None and entry[1] <= now:
                del self.in_flight[receipt]
                self.visible.append(entry[0])


class FastSQS(Resource):
    isLeaf = True

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base
        self.queues: dict[str, Queue] = {}
        self.ids = itertools.count(1)

    def render_POST(self, request):
        op = request.getHeader(b"x-amz-target").decode().split(".")[-1]
        params = json.loads(request.content.read() or b"{}")
        request.setHeader(b"content-type", b"application/x-amz-json-1.0")
        if op == "CreateQueue":
            url = f"{self.base}/000000000000/{params['QueueName']}"
            self.queues.setdefault(url, Queue(url))
            return json.dumps({"QueueUrl": url}).encode()
        queue = self.queues.get(params.get("QueueUrl"))
        if queue is None:
            request.setResponseCode(400)
            return json.dumps({"__type": "com.amazonaws.sqs#QueueDoesNotExist",
                               "message": "The specified queue does not exist."}).encode()
        answer = getattr(self, op)(queue, params, request)
        return answer if answer is NOT_DONE_YET else json.dumps(answer).encode()

    def GetQueueAttributes(self, queue, params, request):
        queue.expire()
        return {"Attributes": {"ApproximateNumberOfMessages": str(len(queue.visible)),
                               "ApproximateNumberOfMessagesNotVisible":
                                   str(len(queue.in_flight)),
                               "VisibilityTimeout": "30"}}

    def SendMessageBatch(self, queue, params, request):
        ok = []
        for e in params["Entries"]:
            mid = f"{next(self.ids):012d}-fast"
            queue.bodies[mid] = e["MessageBody"]
            queue.counts[mid] = 0
            queue.sent_at[mid] = str(int(time.time() * 1000))
            queue.visible.append(mid)
            ok.append({"Id": e["Id"], "MessageId": mid, "MD5OfMessageBody":
                       hashlib.md5(e["MessageBody"].encode()).hexdigest()})
        self._serve_waiting(queue)
        return {"Successful": ok, "Failed": []}

    def _take(self, queue, params):
        queue.expire()
        n = params.get("MaxNumberOfMessages", 1)
        timeout = params.get("VisibilityTimeout", 30)
        deadline = time.monotonic() + timeout
        out = []
        while queue.visible and len(out) < n:
            mid = queue.visible.popleft()
            if mid not in queue.bodies:
                continue  # deleted while visible again
            queue.counts[mid] += 1
            receipt = f"{mid}:{queue.counts[mid]}"
            queue.in_flight[receipt] = (mid, deadline)
            heapq.heappush(queue.deadlines, (deadline, receipt))
            body = queue.bodies[mid]
            out.append({"MessageId": mid, "ReceiptHandle": receipt, "Body": body,
                        "MD5OfBody": hashlib.md5(body.encode()).hexdigest(),
                        "Attributes": {"ApproximateReceiveCount": str(queue.counts[mid]),
                                       "SentTimestamp": queue.sent_at[mid]}})
        return out

    def ReceiveMessage(self, queue, params, request):
        out = self._take(queue, params)
        wait = params.get("WaitTimeSeconds", 0)
        if out or not wait:
            return {"Messages": out} if out else {}
        entry = [request, params, None]
        entry[2] = reactor.callLater(wait, self._answer, queue, entry, [])
        queue.waiting.append(entry)
        return NOT_DONE_YET

    def _serve_waiting(self, queue) -> None:
        while queue.waiting and queue.visible:
            entry = queue.waiting.popleft()
            entry[2].cancel()
            self._answer(queue, entry, self._take(queue, entry[1]))

    def _answer(self, queue, entry, out) -> None:
        if entry in queue.waiting:
            queue.waiting.remove(entry)
        request = entry[0]
        if not request._disconnected:
            request.write(json.dumps({"Messages": out} if out else {}).encode())
            request.finish()

    def DeleteMessageBatch(self, queue, params, request):
        ok, failed = [], []
        for e in params["Entries"]:
            entry = queue.in_flight.pop(e["ReceiptHandle"], None)
            if entry is None:
                failed.append({"Id": e["Id"], "Code": "ReceiptHandleIsInvalid",
                               "SenderFault": True, "Message": "unknown receipt"})
                continue
            mid = entry[0]
            del queue.bodies[mid], queue.counts[mid], queue.sent_at[mid]
            ok.append({"Id": e["Id"]})
        return {"Successful": ok, "Failed": failed}

    def ChangeMessageVisibilityBatch(self, queue, params, request):
        ok, failed = [], []
        now = time.monotonic()
        for e in params["Entries"]:
            receipt = e["ReceiptHandle"]
            entry = queue.in_flight.get(receipt)
            if entry is None:
                failed.append({"Id": e["Id"], "Code": "ReceiptHandleIsInvalid",
                               "SenderFault": True, "Message": "unknown receipt"})
                continue
            if e["VisibilityTimeout"] == 0:
                del queue.in_flight[receipt]
                queue.visible.append(entry[0])
            else:
                deadline = now + e["VisibilityTimeout"]
                queue.in_flight[receipt] = (entry[0], deadline)
                heapq.heappush(queue.deadlines, (deadline, receipt))
            ok.append({"Id": e["Id"]})
        self._serve_waiting(queue)
        return {"Successful": ok, "Failed": failed}


def main() -> None:
    port = int(sys.argv[1])
    site = Site(FastSQS(f"http://127.0.0.1:{port}"))
    site.noisy = False
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.callWhenRunning(lambda: print(f"listening on {port}", flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
