"""
A streamd source plugin, as small as a durable one gets: a directory of JSON files used
as a work queue. Each file is one message, handed to one client; the file is deleted
once the stream acks it (written, or acknowledged by the client) and offered again when
it is nacked, so a message survives client disconnects and streamd restarts until it
was delivered.

    [streams.inbox]
    source = "spool"
    directory = "/var/spool/inbox"

Files are read and deleted on the reactor thread: fine for a local disk and small
files, which is what this example is for.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from itertools import count
from typing import Any

from twisted.internet.task import LoopingCall
from zope.interface import implementer, provider

from streamd.config import ConfigError, Key
from streamd.errors import InvalidRequest, SourceDown
from streamd.interfaces import ISource, ISourceKind, ISubscription
from streamd.message import InvalidPayload, Message, normalize_json


@implementer(ISubscription)
class SpoolSubscription:
    def __init__(self, source: SpoolSource, consumer) -> None:
        self.source = source
        self.consumer = consumer
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def ack(self, messages) -> None:
        # Any time after delivery, even after cancel(): the file name is the handle.
        for m in messages:
            if self.source.held.pop(m.handle, None) is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.source.directory, m.handle))

    def nack(self, messages) -> None:
        for m in messages:
            self.source.held.pop(m.handle, None)  # offered again at the next read

    def cancel(self) -> None:
        if self in self.source.subscribers:
            self.source.subscribers.remove(self)


@provider(ISourceKind)
@implementer(ISource)
class SpoolSource:
    kind = "spool"
    durable = True
    config_keys = [
        Key("directory", "str", None, "the directory of *.json files",
            check=lambda v: "required: the spool directory" if not v else None),
        Key("batch", "int", 10, "files handed to a client per read", minimum=1),
        Key("interval", "number", 0.1, "seconds between reads of the directory",
            minimum=0.01),
    ]

    @staticmethod
    def check_config(settings: Mapping[str, Any], where: str) -> None:
        if settings["ack"] == "client" and settings["batch"] > settings["max_unacked"]:
            raise ConfigError(f"{where}.batch", "must not exceed max_unacked")

    @classmethod
    def from_config(cls, settings: Mapping[str, Any], services) -> SpoolSource:
        return cls(settings["name"], settings["directory"], services.reactor,
                   settings["batch"], settings["interval"])

    def __init__(self, name: str, directory: str, clock, batch: int = 10,
                 interval: float = 0.1) -> None:
        self.name = name
        self.directory = directory
        self.batch = batch
        self.interval = interval
        self.subscribers: list[SpoolSubscription] = []
        #: file name -> the subscription it was handed to: not offered again until settled
        self.held: dict[str, SpoolSubscription] = {}
        self._next = 0
        self._seq = count()
        self._reads = LoopingCall(self._read)
        self._reads.clock = clock

    def start(self) -> None:
        self._reads.start(self.interval, now=False)

    def stop(self) -> None:
        if self._reads.running:
            self._reads.stop()
        for sub in list(self.subscribers):
            sub.consumer.source_ended("shutdown")
        self.held.clear()  # the files are still there: offered again after a restart

    def status(self) -> tuple[str, str | None]:
        if not os.path.isdir(self.directory):
            return ("down", f"no directory {self.directory}")
        return ("ok", None)

    def subscribe(self, consumer, since=None) -> SpoolSubscription:
        # A refusal is one of streamd.errors' classes, whose message the client reads;
        # streamd's web layer alone chooses its HTTP status.
        if since is not None:
            raise InvalidRequest("since: a spool stream cannot resume by id")
        if self.status()[0] != "ok":
            raise SourceDown(f"stream {self.name!r} is down: {self.status()[1]}")
        sub = SpoolSubscription(self, consumer)
        self.subscribers.append(sub)
        return sub

    def _read(self) -> None:
        # Queue delivery: one read per tick, to the next client that is not paused.
        ready = [s for s in self.subscribers if not s.paused]
        if not ready or self.status()[0] != "ok":
            return
        names = sorted(n for n in os.listdir(self.directory)
                       if n.endswith(".json") and n not in self.held)[:self.batch]
        if not names:
            return
        self._next = (self._next + 1) % len(ready)
        sub = ready[self._next]
        batch = []
        for n in names:
            try:
                with open(os.path.join(self.directory, n), "rb") as f:
                    data = normalize_json(f.read())
            except (FileNotFoundError, InvalidPayload):
                continue  # taken by another streamd, or not JSON: left alone
            self.held[n] = sub
            batch.append(Message(n[:-len(".json")], self.name, data, None, n))
        if batch:
            sub.consumer.deliver(batch)

    def publish(self, payloads: list[bytes], params) -> list[str]:
        ids = []
        for data in payloads:
            name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}"
            tmp = os.path.join(self.directory, f".{name}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, os.path.join(self.directory, name + ".json"))  # atomic
            ids.append(name)
        return ids
