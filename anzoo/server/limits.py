"""A pool of bytes that requests take from and give back: the service's memory limits.

The service keeps two: the request bodies held in memory (received, not yet decoded), and
the images being decoded (estimated from their headers, plus the photo a drawing request
keeps until its PNG is made). A request that cannot have its share either waits for it (up to
a deadline) or is refused at once, so the memory in use stays under the pool's size however
many clients send at once. Used on the event loop only (no locks).
"""
from __future__ import annotations

import asyncio
import collections

__all__ = ["ByteBudget"]


class ByteBudget:
    """``capacity`` bytes shared by requests, granted first come, first served.

    A request for more than the whole capacity is granted when nothing else holds any (so a
    single large image always fits, alone); requests wait in order, so a large one is not
    starved by a stream of small ones.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, amount: int) -> bool:
        return self.used + amount <= self.capacity or self.used == 0

    def try_acquire(self, amount: int) -> bool:
        """Take ``amount`` bytes now if they are free (and nobody is waiting); False otherwise."""
        if amount <= 0:
            return True
        if self._waiters or not self._fits(amount):
            return False
        self.used += amount
        return True

    async def acquire(self, amount: int, timeout: float) -> None:
        """Take ``amount`` bytes, waiting at most ``timeout`` seconds (TimeoutError)."""
        if self.try_acquire(amount):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (amount, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), max(timeout, 0.0))
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(amount)  # granted just as we gave up
            else:
                future.cancel()
                self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, amount: int) -> None:
        """Give back ``amount`` bytes taken before."""
        if amount <= 0:
            return
        self.used = max(0, self.used - amount)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            amount, future = self._waiters.popleft()
            self.used += amount
            future.set_result(None)
