"""
streamd's Python client: read any NDJSON or SSE stream with a limit, an on/off switch,
an exact counter, a queue with flow control, acknowledgements and reconnection::

    client = StreamClient("http://localhost:8080/streams/news", reactor=reactor)
    result = await client.start(limit=10)      # Result(count=10, reason="limit", ...)
    record = await client.queue.get()

L{read} is the blocking form for scripts; C{streamd-tail} and C{streamd-pub} are the
command-line tools (L{streamd.client.cli}).
"""

from streamd.client.backoff import Backoff
from streamd.client.blocking import read
from streamd.client.client import StreamClient
from streamd.client.queues import IRecordQueue, MemoryQueue, RedisQueue
from streamd.client.records import Notice, Record
from streamd.client.redis import RedisLink
from streamd.client.results import ClientError, GaveUp, Result
from streamd.client.state import IClientState, MemoryState, RedisState

__all__ = [
    "Backoff",
    "ClientError",
    "GaveUp",
    "IClientState",
    "IRecordQueue",
    "MemoryQueue",
    "MemoryState",
    "Notice",
    "Record",
    "RedisLink",
    "RedisQueue",
    "RedisState",
    "Result",
    "StreamClient",
    "read",
]
