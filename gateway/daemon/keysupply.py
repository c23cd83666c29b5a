"""The daemon's view of the site's KME: fetch new keys (master) or named keys (slave).

A thin adapter over `kms_client.KmeClient` that times every call for telemetry.
Key_IDs are journalled by the session when the handshake asks (CommitEpoch),
before the key is used.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.handshake import QkdKey
from gateway.telemetry import Telemetry
from kms_client import Key, KmeClient, KmeUnavailable, KmsError


@dataclass(frozen=True)
class DeliveredKey(QkdKey):
    """A QKD key as the KME delivered it: the handshake sees a `QkdKey`; the session
    also reads `extension`, the KME's key_ID_extension (where the key came from:
    metadata for the audit trail, untrusted, never key material). `key` stays out
    of repr; the extension is left out of repr and comparisons too."""

    extension: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)


class KeySupply:
    def __init__(self, client: KmeClient, telemetry: Telemetry,
                 kme_id: str, dec_keys_deadline_s: float) -> None:
        self._client = client
        self._telemetry = telemetry
        self._kme_id = kme_id
        self._deadline_s = dec_keys_deadline_s
        self._status_at: dict[str, float] = {}  # SAE ID -> when its pool level was read

    async def fetch_new(self, peer_id: str, slave_sae_id: str, count: int
                        ) -> list[DeliveredKey]:
        """Master side: `count` fresh keys shared with `slave_sae_id`."""
        container = await self._timed("enc_keys", self._client.enc_keys(slave_sae_id, number=count),
                                      slave_sae_id)
        keys = [_delivered(k) for k in container.keys]
        self._telemetry.qkd_keys_fetched(peer_id, len(keys))
        return keys

    async def fetch_by_id(self, peer_id: str, master_sae_id: str,
                          key_ids: Sequence[str]) -> list[DeliveredKey]:
        """Slave side: the keys the master named (already journalled by the session)."""
        container = await self._timed(
            "dec_keys",
            self._client.dec_keys(master_sae_id, list(key_ids), deadline_s=self._deadline_s),
            master_sae_id,
        )
        keys = [_delivered(k) for k in container.keys]
        self._telemetry.qkd_keys_fetched(peer_id, len(keys))
        return keys

    async def _answers_status(self, peer_sae_id: str) -> bool:
        try:
            await self.pool_status(peer_sae_id)
        except KmsError:
            return False
        return True

    def status_age(self, sae_id: str) -> float:
        """Seconds since the pool level of the link to `sae_id` was last read (inf: never)."""
        at = self._status_at.get(sae_id)
        return float("inf") if at is None else time.monotonic() - at

    async def pool_status(self, slave_sae_id: str) -> tuple[int, int]:
        status = await self._timed("status", self._client.status(slave_sae_id))
        if len(self._status_at) > 65536:  # SAEs of peers long removed
            self._status_at.clear()
        self._status_at[slave_sae_id] = time.monotonic()
        self._telemetry.pool_level(self._kme_id, slave_sae_id, status.stored_key_count,
                                   status.max_key_count)
        return status.stored_key_count, status.max_key_count

    async def _timed(self, operation: str, call, peer_sae_id: str | None = None):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        try:
            result = await call
        except KmeUnavailable as exc:
            self._telemetry.kme_call(self._kme_id, operation, time.monotonic() - started,
                                     type(exc).__name__)
            # A KME with no key for this link answers 503 like a KME that is down.
            # If it still answers status, it is reachable: the pool is short, which
            # the pool-level alarm reports; only a KME that answers nothing is down.
            reachable = peer_sae_id is not None and await self._answers_status(peer_sae_id)
            self._telemetry.kme_reachable(self._kme_id, reachable)
            raise
        except KmsError as exc:
            self._telemetry.kme_call(self._kme_id, operation, time.monotonic() - started,
                                     type(exc).__name__)
            raise
        self._telemetry.kme_call(self._kme_id, operation, time.monotonic() - started, None)
        self._telemetry.kme_reachable(self._kme_id, True)
        return result


def _delivered(k: Key) -> DeliveredKey:
    """A `kms_client.Key` as a `DeliveredKey` (the key bytes copied, the extension kept)."""
    return DeliveredKey(k.key_id, bytes(k.key), k.key_id_extension)
