"""How a session shares a short QKD pool: the ETSI 014 status after each epoch
decides between prefetching and spacing rekeys out; a handshake that found no key
backs off in proportion to its key's remaining lifetime (fakes: no I/O)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.daemon.keypolicy import PREFETCH_RESERVE_EPOCHS
from gateway.daemon.keysupply import KeySupply
from gateway.daemon.session import PeerSession
from gateway.telemetry import Telemetry
from kms_client import KmeUnavailable


class PoolKeys:
    """The KME seen through KeySupply: a pool of `stored` keys."""

    def __init__(self, stored: int) -> None:
        self.stored = stored
        self.fetched = 0

    async def pool_status(self, sae_id: str) -> tuple[int, int]:
        return self.stored, 4096

    async def fetch_new(self, peer_id: str, sae_id: str, count: int) -> list[Any]:
        self.fetched += count
        return []


def _session(keys: PoolKeys, rekey: float = 4.0, lifetime: float = 14.0) -> PeerSession:
    ctx = SimpleNamespace(keys=keys, telemetry=Telemetry("gw-a"),
                          handshake_params=lambda peer: None,
                          config=SimpleNamespace(kme=SimpleNamespace(prefetch=True)))
    peer = SimpleNamespace(id="gw-b", sae_id="SAE_B", qkd="required", qkd_prefetch=True,
                           qkd_keys_per_epoch=1, rekey_interval_s=rekey,
                           key_lifetime_s=lifetime,
                           retry_backoff_s=SimpleNamespace(initial=0.5, max=4.0),
                           tunnel=SimpleNamespace(type="wireguard", liveness_s=30.0))
    return PeerSession(ctx, peer, object(), True)  # type: ignore[arg-type]


async def test_a_full_pool_prefetches_and_keeps_the_rekey_interval() -> None:
    keys = PoolKeys(stored=1000)
    s = _session(keys)
    await s._check_supply()
    assert not s.status.qkd_scarce
    assert keys.fetched == 1
    assert s._rekey_interval() == 4.0


async def test_a_low_pool_stops_prefetch_and_spaces_rekeys_until_it_recovers() -> None:
    keys = PoolKeys(stored=PREFETCH_RESERVE_EPOCHS - 1)
    s = _session(keys)
    now = time.monotonic()
    s.status.installed_mono = now
    s.status.next_rekey_mono = now + 4.0
    await s._check_supply()
    assert s.status.qkd_scarce and s.status.as_dict(now)["qkd_scarce"]
    assert keys.fetched == 0
    assert s._rekey_interval() == 7.0  # half the key lifetime
    assert s.status.next_rekey_mono == pytest.approx(now + 7.0)  # the pending rekey moves too
    keys.stored = PREFETCH_RESERVE_EPOCHS
    await s._check_supply()
    assert not s.status.qkd_scarce and s._rekey_interval() == 4.0
    assert keys.fetched == 1


def test_the_retry_comes_sooner_the_nearer_the_key_is_to_expiry() -> None:
    s = _session(PoolKeys(0))
    now = time.monotonic()
    s.status.installed_mono = now  # just keyed: waits the whole backoff
    fresh = s._share_scarce_keys(4.0)
    s.status.installed_mono = now - 12.0  # 2 s of 14 left
    old = s._share_scarce_keys(4.0)
    s.status.installed_mono = now - 20.0  # expired
    expired = s._share_scarce_keys(4.0)
    assert fresh == pytest.approx(4.0, abs=0.01)
    assert 0.5 < old < 1.2
    assert expired == pytest.approx(0.5)
    s.status.state = "blocked"
    assert s._share_scarce_keys(4.0) == 0.5
    s.status.installed_mono = None  # never keyed: no tunnel at all yet
    s.status.state = "starting"
    assert s._share_scarce_keys(4.0) == 0.5


class Recorder:
    """Telemetry stand-in: records what KeySupply reports."""

    def __init__(self) -> None:
        self.reachable: list[bool] = []

    def kme_reachable(self, kme_id: str, ok: bool) -> None:
        self.reachable.append(ok)

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class ShortKme:
    """A KME that answers 503 to enc_keys; `status_up` says whether status answers."""

    def __init__(self, status_up: bool) -> None:
        self.status_up = status_up

    async def enc_keys(self, slave_sae_id: str, number: int = 1) -> Any:
        raise KmeUnavailable("no KME could serve POST enc_keys: HTTP 503: not enough key")

    async def status(self, slave_sae_id: str) -> Any:
        if not self.status_up:
            raise KmeUnavailable("no KME could serve GET status: ConnectError")
        return SimpleNamespace(stored_key_count=0, max_key_count=4096)


@pytest.mark.parametrize(("status_up", "reachable"), [(True, True), (False, False)])
async def test_an_empty_pool_is_not_an_unreachable_kme(status_up: bool, reachable: bool) -> None:
    telemetry = Recorder()
    supply = KeySupply(ShortKme(status_up), telemetry, "KME_A", 5.0)  # type: ignore[arg-type]
    with pytest.raises(KmeUnavailable):
        await supply.fetch_new("gw-b", "SAE_B", 1)
    assert telemetry.reachable[-1] is reachable
