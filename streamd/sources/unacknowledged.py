"""
L{Unacknowledged}: the subscription base of the at-most-once sources (memory, Redis
pub/sub, channel values), for plugins too.
"""

from __future__ import annotations


class Unacknowledged:
    """
    The subscription side of an at-most-once broadcast source (memory, pub/sub,
    channel values): nothing to pause at the source, nothing to ack or give back.
    A paused client's messages queue in its stream, bounded by its slow policy.
    """

    __slots__ = ()

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def ack(self, messages) -> None:
        pass

    def nack(self, messages) -> None:
        pass

    def skip(self, messages) -> None:
        pass
