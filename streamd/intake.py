"""
L{Intake}: what of each delivery a stream takes. Its filter's matches, up to its
C{limit}; the rest goes back to the source at once: what the filter rejected is
skipped (the source decides what that means: a queue gives it to other clients), what
is over the limit is given back (nack), so C{limit=N} delivers exactly N.
"""

from __future__ import annotations

from typing import Any

from streamd.message import Message


class Intake:
    """
    @ivar accepted: messages taken, which C{limit} bounds.
    @ivar selective: a filter or a limit is set (without either, a stream takes all:
        the common case, which only counts).
    @ivar subscription: where to give back what is not taken; what comes before it is
        known (a source may deliver while C{subscribe()} runs) waits in C{_early} (the
        surplus, what was skipped; None until needed) until L{subscribed}.
    """

    __slots__ = ("filter", "limit", "selective", "accepted", "subscription", "_early")

    def __init__(self, filter=None, limit: int | None = None) -> None:
        """@param filter: None, or what has C{matches(message) -> bool}."""
        self.filter = filter
        self.limit = limit
        self.selective = filter is not None or limit is not None
        self.accepted = 0
        self.subscription: Any = None
        self._early: tuple[list[Message], list[Message]] | None = None

    def take(self, messages: list[Message]) -> list[Message]:
        """What of C{messages} the stream takes (C{messages} itself if all of it)."""
        if self.filter is not None:
            keep: list[Message] = []
            skipped: list[Message] = []
            matches = self.filter.matches
            for m in messages:
                (keep if matches(m) else skipped).append(m)
            if skipped:
                if self.subscription is None:
                    self._held()[1].extend(skipped)
                else:
                    self._skip(skipped)
                messages = keep
        if self.limit is not None:
            room = self.limit - self.accepted
            if len(messages) > room:
                surplus = messages[room:]
                messages = messages[:room]
                if self.subscription is None:
                    self._held()[0].extend(surplus)
                else:
                    self.subscription.nack(surplus)
        self.accepted += len(messages)
        return messages

    def full(self) -> bool:
        """Whether the limit is reached: the stream takes nothing more."""
        return self.limit is not None and self.accepted >= self.limit

    def subscribed(self, subscription) -> None:
        """The subscription exists: give back what came before it."""
        self.subscription = subscription
        if self._early is not None:
            surplus, skipped = self._early
            self._early = None
            if surplus:
                subscription.nack(surplus)
            if skipped:
                self._skip(skipped)

    def _held(self) -> tuple[list[Message], list[Message]]:
        if self._early is None:
            self._early = ([], [])
        return self._early

    def _skip(self, messages: list[Message]) -> None:
        skip = getattr(self.subscription, "skip", None) or self.subscription.nack
        skip(messages)
