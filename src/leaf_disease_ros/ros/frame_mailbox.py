"""
A one-slot, thread-safe mailbox: the newest item wins, older ones are dropped.

The node's image callback :meth:`~LatestMailbox.put` s every frame; the worker thread
:meth:`~LatestMailbox.take` s them. When a frame arrives before the worker has taken
the previous one, the previous one is replaced and counted in
:attr:`~LatestMailbox.dropped`: under load the detector always works on the newest
frame instead of a growing backlog. :meth:`~LatestMailbox.clear` discards the pending
item (pausing), counted apart from drops. :meth:`~LatestMailbox.close` wakes a
waiting taker and refuses further items, so the worker thread can end.
"""

import threading
import time
from typing import Generic, Optional, TypeVar

T = TypeVar('T')


class LatestMailbox(Generic[T]):
    """Hold at most one item; a new item replaces an untaken one."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: Optional[T] = None
        self._has_item = False
        self._closed = False
        self._put = 0
        self._taken = 0
        self._dropped = 0
        self._discarded = 0

    def put(self, item: T) -> bool:
        """
        Store ``item``, replacing an untaken one.

        :param item: the new item (the newest frame).
        :returns: True when an untaken item was replaced (and counted as dropped).
            After :meth:`close` the item is refused and False returned.
        """
        with self._condition:
            if self._closed:
                return False
            replaced = self._has_item
            if replaced:
                self._dropped += 1
            self._item = item
            self._has_item = True
            self._put += 1
            self._condition.notify()
            return replaced

    def take(self, timeout_s: Optional[float] = None) -> Optional[T]:
        """
        Remove and return the item, waiting up to ``timeout_s`` for one.

        :param timeout_s: seconds to wait; None waits until an item or :meth:`close`.
        :returns: The item, or None on timeout or when the mailbox is closed.
        """
        deadline = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
        with self._condition:
            while not self._has_item and not self._closed:
                if deadline is None:
                    self._condition.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0.0:
                    return None
                self._condition.wait(remaining)
            if not self._has_item:
                return None  # closed
            item = self._item
            self._item = None
            self._has_item = False
            self._taken += 1
            return item

    def wait(self, timeout_s: float) -> bool:
        """
        Wait up to ``timeout_s`` for an item without taking it.

        :returns: Whether an item is pending (False on timeout or when closed).
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._condition:
            while not self._has_item and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0.0:
                    return False
                self._condition.wait(remaining)
            return self._has_item

    def clear(self) -> bool:
        """Discard the untaken item, if any; return whether one was discarded."""
        with self._condition:
            if not self._has_item:
                return False
            self._item = None
            self._has_item = False
            self._discarded += 1
            return True

    def close(self) -> None:
        """Refuse further items, drop the pending one and wake any waiting taker."""
        with self._condition:
            self._closed = True
            if self._has_item:
                self._item = None
                self._has_item = False
                self._discarded += 1
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        with self._condition:
            return self._closed

    @property
    def pending(self) -> bool:
        """Whether an item waits to be taken."""
        with self._condition:
            return self._has_item

    @property
    def dropped(self) -> int:
        """Items replaced by a newer one before they were taken."""
        with self._condition:
            return self._dropped

    @property
    def discarded(self) -> int:
        """Items removed by :meth:`clear` or :meth:`close` before they were taken."""
        with self._condition:
            return self._discarded

    @property
    def put_count(self) -> int:
        """Items accepted by :meth:`put`."""
        with self._condition:
            return self._put

    @property
    def taken(self) -> int:
        """Items returned by :meth:`take`."""
        with self._condition:
            return self._taken
