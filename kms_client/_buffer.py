"""``KeyBuffer``: master-side batching of enc_keys, each key handed out exactly once.

One enc_keys call fetches up to ``batch`` keys (at most the KME's
max_key_per_request); ``take()`` hands them out one by one. Keys are popped
before they are returned, so no key can be handed out twice, even to
concurrent callers. Keys older than ``max_age_s`` and every key left at
``aclose()`` are dropped (Python cannot wipe ``bytes``; the buffer releases its
only references and never gives them to anyone else).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType

from kms_client._client import KmeClient
from kms_client._errors import KeyBufferClosed, KmeInvalidArgument
from kms_client._models import Key


class KeyBuffer:
    """A small buffer of keys shared with one slave SAE (and any additional slaves)."""

    def __init__(
        self,
        client: KmeClient,
        slave_sae_id: str,
        *,
        batch: int | None = None,
        size: int | None = None,
        additional_slave_sae_ids: Sequence[str] = (),
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch is not None and (isinstance(batch, bool) or batch < 1):
            raise KmeInvalidArgument("batch must be a positive integer")
        if max_age_s is not None and max_age_s <= 0:
            raise KmeInvalidArgument("max_age_s must be positive")
        self._client = client
        self._slave = slave_sae_id
        self._batch = batch
        self._size = size
        self._extra = tuple(additional_slave_sae_ids)
        self._max_age = max_age_s
        self._clock = clock
        self._keys: deque[tuple[float, Key]] = deque()
        self._lock = asyncio.Lock()
        self._closed = False
        self.fetched = 0  # keys obtained from the KME
        self.handed_out = 0
        self.dropped = 0  # expired or discarded at close, never handed out

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def batch(self) -> int | None:
        """The batch size in use (None until the KME's maximum is known)."""
        return self._batch

    async def __aenter__(self) -> KeyBuffer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def take(self) -> Key:
        """One key not handed out before; fetches a batch when the buffer is empty."""
        return (await self.take_many(1))[0]

    async def take_many(self, count: int) -> list[Key]:
        """``count`` keys, each handed out once; fetches as many batches as needed."""
        if isinstance(count, bool) or count < 1:
            raise KmeInvalidArgument("count must be a positive integer")
        out: list[Key] = []
        while len(out) < count:
            self._check_open()
            self._expire()
            while self._keys and len(out) < count:
                out.append(self._keys.popleft()[1])
            if len(out) < count:
                # Serialise refills so that concurrent takers share one enc_keys call.
                async with self._lock:
                    self._check_open()
                    self._expire()
                    if not self._keys:
                        await self._refill()
        self.handed_out += len(out)
        return out

    async def _refill(self) -> None:
        if self._batch is None:
            status = await self._client.status(self._slave)
            self._batch = max(1, status.max_key_per_request)
        # Always a whole batch: asking for less costs one round trip per key.
        container = await self._client.enc_keys(
            self._slave, number=self._batch, size=self._size, additional_slave_sae_ids=self._extra
        )
        if self._closed:
            # Closed while we were fetching: the new keys are never handed out.
            self.dropped += len(container.keys)
            return
        now = self._clock()
        self._keys.extend((now, k) for k in container.keys)
        self.fetched += len(container.keys)

    def _expire(self) -> None:
        if self._max_age is None:
            return
        limit = self._clock() - self._max_age
        while self._keys and self._keys[0][0] < limit:
            self._keys.popleft()
            self.dropped += 1

    def _check_open(self) -> None:
        if self._closed:
            raise KeyBufferClosed("KeyBuffer is closed")

    async def aclose(self) -> None:
        """Drop every key not handed out; later takes raise ``KeyBufferClosed``."""
        self._closed = True
        self.dropped += len(self._keys)
        self._keys.clear()
