"""
L{Backoff}: how long a client waits before each reconnection attempt.

The exponential, capped part is Twisted's C{backoffPolicy} (the retry policy of
C{ClientService}). Its jitter adds up to a second whatever the delay; ours takes off a
random fraction of the delay, so that many clients dropped at once spread out at every
scale (0.5 s or 30 s) and never wait longer than the cap.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.application.internet import backoffPolicy


def _no_jitter() -> float:
    return 0.0


@attrs.frozen
class Backoff:
    """
    Exponential backoff with jitter: attempt k (1 for the first retry) waits
    C{min(maximum, initial * factor**(k-1))}, less a random fraction (up to C{jitter})
    of it.
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5
    _base: Callable[[int], float] = attrs.field(
        init=False, repr=False, eq=False,
        default=attrs.Factory(
            lambda self: backoffPolicy(self.initial, self.maximum, self.factor, _no_jitter),
            takes_self=True))

    def delay(self, attempt: int, rand: Callable[[], float]) -> float:
        """The wait before attempt C{attempt}; C{rand()} is in [0, 1)."""
        return self._base(attempt - 1) * (1.0 - self.jitter * rand())

    def policy(self, rand: Callable[[], float]) -> Callable[[int], float]:
        """This backoff as a retry policy (C{attempt -> seconds}), drawing from C{rand}."""
        return lambda attempt: self.delay(attempt, rand)
