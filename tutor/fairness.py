"""Fair shares of the tutor: how many questions one client may have in flight at a time.

A student asks, reads, then asks again: one answer in flight per session is all a person needs,
and a client firing questions faster than answers finish would otherwise crowd out the class.
A program can open a new session per request, so the network address may be limited too; that
limit is off unless a deployer sets one, because a whole class may sit behind one school
address.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tutor.errors import BusyError, TutorError


class TooManyAtOnceError(TutorError):
    """This client already has as many questions in flight as it may."""


class InFlightLimits:
    """Counts questions in flight per session and per address; refuses those beyond the limits.

    Memory is bounded by the questions in flight: a key is forgotten when its count drops to 0.
    """

    def __init__(self, per_session: int, per_address: int | None = None) -> None:
        """PER_ADDRESS None: no limit per address."""
        self.per_session, self.per_address = per_session, per_address
        self._lock = threading.Lock()
        self._sessions: collections.Counter[str] = collections.Counter()
        self._addresses: collections.Counter[str] = collections.Counter()

    @contextmanager
    def hold(self, session: str, address: str) -> Iterator[None]:
        """One question in flight for SESSION at ADDRESS, for the duration of the block."""
        with self._lock:
            if self._sessions[session] >= self.per_session:
                raise TooManyAtOnceError(
                    "You already have a question being answered: wait for it to finish (or press "
                    "Stop) before asking another."
                )
            if self.per_address is not None and self._addresses[address] >= self.per_address:
                raise TooManyAtOnceError(
                    "Too many questions from your network are being answered at once. Please "
                    "try again when one has finished."
                )
            self._sessions[session] += 1
            self._addresses[address] += 1
        try:
            yield
        finally:
            with self._lock:
                for counter, key in ((self._sessions, session), (self._addresses, address)):
                    counter[key] -= 1
                    if counter[key] <= 0:
                        del counter[key]


class BoundedLine:
    """At most LIMIT holders at a time (one being served, the rest waiting for it); the next
    one is refused at once with a BusyError instead of joining an endless line."""

    def __init__(self, limit: int) -> None:
        self._places = threading.BoundedSemaphore(limit)

    @contextmanager
    def hold(self) -> Iterator[None]:
        if not self._places.acquire(blocking=False):
            raise BusyError()
        try:
            yield
        finally:
            self._places.release()
