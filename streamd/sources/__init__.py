"""
The source kinds a stream table may name, imported only when a stream uses them.

Each kind maps to C{"module:factory"}; the factory is called as
C{factory(settings, services)} where C{settings} is the validated stream table
(see L{streamd.config}) and C{services} a L{streamd.sources.Services}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

KINDS = {
    "memory": "streamd.sources.memory:MemorySource.from_config",
    "sqs": "streamd.sources.sqs:SQSSource.from_config",
    "redis-pubsub": "streamd.sources.redis_pubsub:RedisPubSubSource.from_config",
    "redis-list": "streamd.sources.redis_list:RedisListSource.from_config",
    "redis-stream": "streamd.sources.redis_stream:RedisStreamSource.from_config",
}


@dataclass
class Services:
    """What a source may use: injected, never imported as globals."""

    reactor: Any
    settings: dict[str, Any]
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. named Redis connections
    metrics: Any = None  # streamd.metrics.Metrics: sources count errors, reconnects, requests


def make_source(settings: dict[str, Any], services: Services):
    """Build the source for one validated stream table."""
    module, _, attr = KINDS[settings["source"]].partition(":")
    obj: Any = import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj(settings, services)
