"""Conformance matrix: KmeClient and KeyBuffer against the real KME simulator over mutual TLS
on loopback (every endpoint in both forms, error codes and messages, sizes, multicast,
exhaustion, foreign keys, TLS identity, failover, injected 503s, latency, delayed keys)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from _requires import require
from kms_helpers import FAST_RETRY, TestCA

from kms_client import (
    KeyBuffer,
    KeyBufferClosed,
    KmeBadRequest,
    KmeClient,
    KmeEndpoint,
    KmeIdentityMismatch,
    KmeKeyNotFound,
    KmeUnauthorized,
    KmeUnavailable,
    RetryPolicy,
    SaeCredentials,
)

require("kme-sim")  # its dependencies come with the venv `make setup` makes
from kms_client.sim.server import Simulator  # noqa: E402

# A-B: a big pool; A-C: a link for multicast; A-D: a tiny pool with no refill (exhaustion).
TOPOLOGY = """
name: kmstest
defaults:
  key_size: 256
  min_key_size: 64
  max_key_size: 1024
  max_key_per_request: 8
  max_SAE_ID_count: 2
kmes:
  - {id: KME_A, saes: [SAE_A]}
  - {id: KME_B, saes: [SAE_B]}
  - {id: KME_C, saes: [SAE_C]}
  - {id: KME_D, saes: [SAE_D]}
links:
  - {id: ab, kind: point_to_point, kmes: [KME_A, KME_B], rate_bps: 0, capacity_bits: 1000000}
  - {id: ac, kind: point_to_point, kmes: [KME_A, KME_C], rate_bps: 0, capacity_bits: 1000000}
  - {id: ad, kind: point_to_point, kmes: [KME_A, KME_D], rate_bps: 0, capacity_bits: 2048}
"""


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    topo = tmp_path / "topology.yaml"
    topo.write_text(TOPOLOGY)
    async with Simulator.start(topo, tmp_path / "state", host="127.0.0.1", seed=1) as s:
        yield s


ClientFactory = Callable[..., KmeClient]


@pytest.fixture
async def clients(sim: Simulator) -> AsyncIterator[ClientFactory]:
    made: list[KmeClient] = []

    def make(
        sae: str,
        *,
        urls: list[str] | None = None,
        kme_id: str | None = None,
        timeout: float = 2.0,
        retry: RetryPolicy = FAST_RETRY,
        cert: tuple[Path, Path] | None = None,
    ) -> KmeClient:
        ep = sim.endpoints
        kme = ep["saes"][sae]["kme"]
        ca = Path(ep["kmes"][kme]["ca"])
        urls = urls or [ep["kmes"][kme]["url"]]
        cert_file, key_file = cert or (Path(ep["saes"][sae]["cert"]), Path(ep["saes"][sae]["key"]))
        client = KmeClient(
            [KmeEndpoint(url=u, kme_id=kme_id or kme, ca_file=ca) for u in urls],
            SaeCredentials(sae_id=sae, cert_file=cert_file, key_file=key_file),
            timeout=timeout,
            retry=retry,
        )
        made.append(client)
        return client

    try:
        yield make
    finally:
        for c in made:
            await c.aclose()


# ------------------------------------------------------------------ endpoints


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_enc_then_dec_gives_both_sides_the_same_keys(
    sim: Simulator, clients: ClientFactory, method: Any
) -> None:
    master, slave = clients("SAE_A"), clients("SAE_B")
    status = await master.status("SAE_B")
    assert (status.source_kme_id, status.target_kme_id) == ("KME_A", "KME_B")
    assert (status.master_sae_id, status.slave_sae_id) == ("SAE_A", "SAE_B")
    assert status.key_size == 256 and status.max_key_per_request == 8
    enc = await master.enc_keys("SAE_B", number=1, method=method)
    dec = await slave.dec_keys("SAE_A", list(enc.key_ids), method=method)
    assert dec.key_ids == enc.key_ids
    assert dec.keys[0].key == enc.keys[0].key and len(enc.keys[0].key) == 32
    assert sim.delivered_key_ids("SAE_B") == list(enc.key_ids)
    # Every key is delivered once to each side.
    with pytest.raises(KmeKeyNotFound):
        await slave.dec_keys("SAE_A", list(enc.key_ids))


async def test_batch_post_and_status_counts(clients: ClientFactory) -> None:
    master, slave = clients("SAE_A"), clients("SAE_B")
    before = (await master.status("SAE_B")).stored_key_count
    enc = await master.enc_keys("SAE_B", number=8, size=256)
    assert len(set(enc.key_ids)) == 8
    assert (await master.status("SAE_B")).stored_key_count == before - 8
    dec = await slave.dec_keys("SAE_A", list(reversed(enc.key_ids)))
    assert dec.key_ids == tuple(reversed(enc.key_ids))
    assert {k.key_id: k.key for k in dec.keys} == {k.key_id: k.key for k in enc.keys}


@pytest.mark.parametrize("size", [64, 264, 512, 1024])
async def test_sizes_multiple_of_8(clients: ClientFactory, size: int) -> None:
    enc = await clients("SAE_A").enc_keys("SAE_B", number=2, size=size)
    assert all(len(k.key) * 8 == size for k in enc.keys)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 100}, "size shall be a multiple of 8"),
        ({"size": 2048}, "max_key_size"),
        ({"number": 9}, "max_key_per_request"),
        ({"extension_mandatory": [{"abc_route": "x"}]}, "extension_mandatory"),
        ({"additional_slave_sae_ids": ["SAE_C", "SAE_D", "SAE_B"]}, "max_SAE_ID_count"),
    ],
)
async def test_bad_requests_carry_the_kme_message(
    clients: ClientFactory, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(KmeBadRequest, match=message) as info:
        await clients("SAE_A").enc_keys("SAE_B", **kwargs)
    assert info.value.status_code == 400


async def test_extension_optional_passes(clients: ClientFactory) -> None:
    enc = await clients("SAE_A").enc_keys("SAE_B", extension_optional=[{"abc_qos": 1}])
    assert len(enc.keys) == 1


async def test_multicast_keys_reach_every_slave(clients: ClientFactory) -> None:
    enc = await clients("SAE_A").enc_keys("SAE_B", number=2, additional_slave_sae_ids=["SAE_C"])
    b = await clients("SAE_B").dec_keys("SAE_A", list(enc.key_ids))
    c = await clients("SAE_C").dec_keys("SAE_A", list(enc.key_ids))
    assert [k.key for k in b.keys] == [k.key for k in c.keys] == [k.key for k in enc.keys]


async def test_slave_asking_for_a_key_not_meant_for_it(clients: ClientFactory) -> None:
    enc = await clients("SAE_A").enc_keys("SAE_B")
    with pytest.raises(KmeUnauthorized):
        await clients("SAE_C").dec_keys("SAE_A", list(enc.key_ids), deadline_s=1.0)
    # The rightful slave still gets it.
    assert (await clients("SAE_B").dec_keys("SAE_A", list(enc.key_ids))).key_ids == enc.key_ids


async def test_unknown_key_id(clients: ClientFactory) -> None:
    with pytest.raises(KmeKeyNotFound, match="not found"):
        await clients("SAE_B").dec_keys("SAE_A", [str(uuid.uuid4())], deadline_s=0.1)


async def test_exhaustion_is_unavailable_with_the_reason(clients: ClientFactory) -> None:
    master = clients("SAE_A")
    enc = await master.enc_keys("SAE_D", number=8)  # the whole 2048-bit pool
    assert len(enc.keys) == 8
    assert (await master.status("SAE_D")).stored_key_count == 0
    with pytest.raises(KmeUnavailable, match="not enough key material"):
        await master.enc_keys("SAE_D")


# ------------------------------------------------------------------ identity


async def test_certificate_of_an_sae_not_served_by_this_kme(
    sim: Simulator, clients: ClientFactory
) -> None:
    ep = sim.endpoints
    b_cert = (Path(ep["saes"]["SAE_B"]["cert"]), Path(ep["saes"]["SAE_B"]["key"]))
    with pytest.raises(KmeUnauthorized, match="HTTP 401"):
        await clients("SAE_A", cert=b_cert).status("SAE_B")


async def test_certificate_from_another_ca(
    clients: ClientFactory, tmp_path: Path
) -> None:
    rogue = TestCA(tmp_path / "rogue", "rogue-ca").issue("SAE_A", server=False)
    with pytest.raises((KmeUnauthorized, KmeUnavailable), match="certificate"):
        await clients("SAE_A", cert=(rogue.cert, rogue.key)).status("SAE_B")


async def test_no_client_certificate_is_refused(sim: Simulator) -> None:
    ep = sim.endpoints
    ctx = ssl.create_default_context(cafile=ep["kmes"]["KME_A"]["ca"])
    async with httpx.AsyncClient(verify=ctx, timeout=2.0) as raw:
        try:
            r = await raw.get(ep["kmes"]["KME_A"]["url"] + "/api/v1/keys/SAE_B/status")
        except httpx.TransportError:
            return  # refused in the TLS handshake
    pytest.fail(f"KME answered HTTP {r.status_code} to a client without a certificate")


async def test_wrong_kme_id(clients: ClientFactory) -> None:
    with pytest.raises(KmeIdentityMismatch, match=r"'KME_A'.*'KME_B'"):
        await clients("SAE_A", kme_id="KME_B").status("SAE_B")


async def test_kme_from_another_ca(sim: Simulator, tmp_path: Path) -> None:
    ep = sim.endpoints
    other = TestCA(tmp_path / "other", "other-ca")
    client = KmeClient(
        [KmeEndpoint(ep["kmes"]["KME_A"]["url"], "KME_A", other.ca_file)],
        SaeCredentials(
            "SAE_A", Path(ep["saes"]["SAE_A"]["cert"]), Path(ep["saes"]["SAE_A"]["key"])
        ),
        retry=FAST_RETRY,
    )
    async with client:
        with pytest.raises(KmeIdentityMismatch, match="did not verify"):
            await client.status("SAE_B")


async def test_a_new_connection_resumes_the_tls_session_and_keeps_the_identity(
    clients: ClientFactory,
) -> None:
    """An SAE that drops its connection between calls resumes its TLS session on the
    next (a quarter of the CPU of a full handshake); the KME still knows who calls:
    the keys SAE_A fetched reach SAE_B only, over resumed sessions on both sides."""
    master, slave = clients("SAE_A"), clients("SAE_B")
    for _ in range(3):
        enc = await master.enc_keys("SAE_B", number=1)
        await master.drop_connections()
        dec = await slave.dec_keys("SAE_A", list(enc.key_ids))
        await slave.drop_connections()
        assert dec.keys[0].key == enc.keys[0].key
        with pytest.raises(KmeKeyNotFound):  # SAE_A is not the slave of its own keys
            await master.dec_keys("SAE_A", list(enc.key_ids))
        await master.drop_connections()
    assert master.tls_handshakes == {"full": 1, "resumed": 5}
    assert slave.tls_handshakes == {"full": 1, "resumed": 2}


async def test_an_old_session_is_not_resumed(clients: ClientFactory,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Past RESUME_MAX_AGE_S the KME certificate is verified afresh: a full handshake."""
    from kms_client import _tls

    monkeypatch.setattr(_tls, "RESUME_MAX_AGE_S", 0.0)
    master = clients("SAE_A")
    for _ in range(3):
        await master.status("SAE_B")
        await master.drop_connections()
    assert master.tls_handshakes == {"full": 3, "resumed": 0}


# ------------------------------------------------------------------ faults


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_failover_to_a_second_kme_endpoint(sim: Simulator, clients: ClientFactory) -> None:
    url = sim.endpoints["kmes"]["KME_A"]["url"]
    master = clients("SAE_A", urls=[f"https://127.0.0.1:{_closed_port()}", url])
    enc = await master.enc_keys("SAE_B", number=2)
    assert len(enc.keys) == 2


async def test_outage_is_unavailable_then_heals(sim: Simulator, clients: ClientFactory) -> None:
    master = clients("SAE_A")
    sim.set_fault("KME_A", outage=True)
    with pytest.raises(KmeUnavailable, match="503"):
        await master.status("SAE_B")
    sim.clear_faults("KME_A")
    assert (await master.status("SAE_B")).slave_sae_id == "SAE_B"


async def test_retries_ride_out_injected_503s(sim: Simulator, clients: ClientFactory) -> None:
    sim.set_fault("KME_A", error_rate=0.5)
    retry = RetryPolicy(attempts=12, base_delay_s=0.001, max_delay_s=0.005)
    master = clients("SAE_A", retry=retry)
    for _ in range(10):
        assert len((await master.enc_keys("SAE_B")).keys) == 1


async def test_latency_within_and_beyond_the_timeout(
    sim: Simulator, clients: ClientFactory
) -> None:
    sim.set_fault("KME_A", latency_s=0.05)
    assert len((await clients("SAE_A", timeout=2.0).enc_keys("SAE_B")).keys) == 1
    sim.set_fault("KME_A", latency_s=0.6)
    with pytest.raises(KmeUnavailable, match="timeout"):
        await clients("SAE_A", timeout=0.2).status("SAE_B")


async def test_delayed_key_is_waited_for(sim: Simulator, clients: ClientFactory) -> None:
    sim.set_fault("KME_B", key_delay_s=0.3)
    enc = await clients("SAE_A").enc_keys("SAE_B")
    slave = clients("SAE_B")
    with pytest.raises(KmeKeyNotFound):
        await slave.dec_keys("SAE_A", list(enc.key_ids))  # no deadline: asked once
    dec = await slave.dec_keys("SAE_A", list(enc.key_ids), deadline_s=5.0)
    assert dec.keys[0].key == enc.keys[0].key


async def test_noop_endpoint(clients: ClientFactory) -> None:
    assert await clients("SAE_A").get_raw("/api/v1/noop") == b"{}"


# ------------------------------------------------------------------ KeyBuffer


async def test_key_buffer_batches_and_hands_out_each_key_once(
    sim: Simulator, clients: ClientFactory
) -> None:
    master, slave = clients("SAE_A"), clients("SAE_B")
    buf = KeyBuffer(master, "SAE_B")
    keys = [await buf.take() for _ in range(5)] + await buf.take_many(15)
    assert buf.batch == 8  # learnt from status max_key_per_request
    assert buf.fetched == 24 and buf.handed_out == 20 and len(buf) == 4
    ids = [k.key_id for k in keys]
    assert len(set(ids)) == 20
    # Each handed-out key is the slave's key too.
    dec = await slave.dec_keys("SAE_A", ids[:8])
    assert [k.key for k in dec.keys] == [k.key for k in keys[:8]]
    await buf.aclose()
    assert len(buf) == 0 and buf.dropped == 4
    with pytest.raises(KeyBufferClosed):
        await buf.take()
    # The dropped keys were delivered to the master once and never handed to anyone.
    assert len(sim.delivered_key_ids("SAE_A")) == 24


async def test_key_buffer_concurrent_takers_never_share_a_key(clients: ClientFactory) -> None:
    buf = KeyBuffer(clients("SAE_A"), "SAE_B", batch=4)
    got = await asyncio.gather(*(buf.take() for _ in range(30)))
    assert len({k.key_id for k in got}) == 30
    assert buf.fetched == 32  # 8 batches of 4: refills were not duplicated
    await buf.aclose()


async def test_key_buffer_drops_stale_keys(clients: ClientFactory) -> None:
    now = [0.0]
    buf = KeyBuffer(clients("SAE_A"), "SAE_B", batch=4, max_age_s=10, clock=lambda: now[0])
    first = await buf.take()
    now[0] = 11.0
    second = await buf.take()
    assert buf.dropped == 3 and buf.fetched == 8
    assert first.key_id != second.key_id
    await buf.aclose()
