"""Each QKD key's key_ID_extension goes from the KME, through KeySupply and the session,
into the epoch's audit record, and never with the key bytes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gateway.daemon.keysupply import DeliveredKey, KeySupply
from gateway.daemon.session import PeerSession
from gateway.handshake import FetchQkdKeys, FetchQkdKeysById, InstallKey, QkdKey
from gateway.telemetry import AuditLog, Telemetry, verify_files
from kms_client import KeyContainer

K1 = "11111111-1111-4111-8111-111111111111"
K2 = "22222222-2222-4222-8222-222222222222"
KEY1, KEY2 = bytes(range(32)), bytes(range(32, 64))
RELAY = {"qsgw_route": {"kind": "trusted_relay", "link": "redu-singapore-relay",
                        "path": ["KME_ESEC_REDU", "KME_LUX_DC", "KME_SINGAPORE"]}}
HUB = {"qsgw_route": {"kind": "mdi_hub", "link": "madrid-mdi",
                      "path": ["KME_INTA", "HUB_MQX4000", "KME_SGSICS"]}}


def _container(*keys: tuple[str, bytes, dict[str, Any] | None]) -> KeyContainer:
    out = []
    for kid, key, ext in keys:
        item: dict[str, Any] = {"key_ID": kid, "key": base64.b64encode(key).decode()}
        if ext is not None:
            item["key_ID_extension"] = ext
        out.append(item)
    return KeyContainer.from_json({"keys": out})


class FakeClient:
    def __init__(self, container: KeyContainer) -> None:
        self.container = container
        self.calls: list[str] = []

    async def enc_keys(self, slave_sae_id: str, number: int = 1) -> KeyContainer:
        self.calls.append("enc_keys")
        return self.container

    async def dec_keys(self, master_sae_id: str, key_ids: list[str],
                       deadline_s: float | None = None) -> KeyContainer:
        self.calls.append("dec_keys")
        return self.container


async def test_keysupply_keeps_each_keys_extension() -> None:
    client = FakeClient(_container((K1, KEY1, RELAY), (K2, KEY2, None)))
    supply = KeySupply(client, Telemetry("gw"), "KME_ESEC_REDU", 5.0)  # type: ignore[arg-type]
    for keys in (await supply.fetch_new("p", "SAE_B", 2),
                 await supply.fetch_by_id("p", "SAE_A", [K1, K2])):
        assert [type(k) for k in keys] == [DeliveredKey, DeliveredKey]
        assert isinstance(keys[0], QkdKey)  # the handshake sees a QkdKey
        assert (keys[0].key_id, keys[0].key, keys[0].extension) == (K1, KEY1, RELAY)
        assert keys[1].extension is None
        # Metadata, never in repr; the key bytes neither.
        text = repr(keys[0])
        assert K1 in text and "KME_LUX_DC" not in text and KEY1.hex() not in text
        # The extension is no part of the key's identity.
        assert keys[0] == DeliveredKey(K1, KEY1, None) and hash(keys[0]) == hash(
            DeliveredKey(K1, KEY1, HUB))
    assert client.calls == ["enc_keys", "dec_keys"]


class FakeKeys:
    def __init__(self, keys: list[DeliveredKey]) -> None:
        self.keys = keys
        self.calls: list[str] = []

    async def fetch_new(self, peer_id: str, sae_id: str, count: int) -> list[DeliveredKey]:
        self.calls.append("fetch_new")
        return self.keys[:count]

    async def fetch_by_id(self, peer_id: str, sae_id: str,
                          key_ids: list[str]) -> list[DeliveredKey]:
        self.calls.append("fetch_by_id")
        return [k for k in self.keys if k.key_id in key_ids]


class FakeMachine:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def on_qkd_keys(self, keys: list[Any], now: float) -> list[Any]:
        self.got = list(keys)
        return []


class FakeDriver:
    installed: list[int]

    def __init__(self) -> None:
        self.installed = []

    async def install_key(self, epoch: int, key: bytes) -> None:
        self.installed.append(epoch)


def _session(tmp_path: Path, keys: FakeKeys, initiator: bool) -> PeerSession:
    telemetry = Telemetry("gw-redu", audit=AuditLog(tmp_path / "audit.jsonl"))
    ctx = SimpleNamespace(keys=keys, telemetry=telemetry, handshake_params=lambda peer: None)
    peer = SimpleNamespace(id="gw-singapore", sae_id="SAE_SINGAPORE_GW", qkd="required",
                           qkd_prefetch=True, qkd_keys_per_epoch=2,
                           tunnel=SimpleNamespace(type="wireguard", liveness_s=30.0))
    return PeerSession(ctx, peer, FakeDriver(), initiator)  # type: ignore[arg-type]


def _install(epoch: int, key_ids: tuple[str, ...]) -> InstallKey:
    return InstallKey(epoch, bytearray(32), ("mlkem768", "qkd", "x25519"), key_ids,
                      "mlkem768+x25519", False, True)


def _epochs(path: Path) -> list[dict[str, Any]]:
    recs = [json.loads(x) for x in path.read_bytes().splitlines()]
    return [r for r in recs if r["type"] == "epoch"]


async def test_session_audits_the_origin_of_fetched_prefetched_and_named_keys(
    tmp_path: Path,
) -> None:
    keys = FakeKeys([DeliveredKey(K1, KEY1, RELAY), DeliveredKey(K2, KEY2, HUB)])
    s = _session(tmp_path, keys, initiator=True)
    machine = FakeMachine()

    # Master, fetched on demand.
    await s._fetch_new(machine, FetchQkdKeys(2))
    assert [k.key for k in machine.got] == [KEY1, KEY2]  # the key bytes go to the machine
    await s._install(_install(1, (K1, K2)), 0.1)

    # Master, from the prefetch (the next epoch's keys, fetched after the last one).
    await s._prefetch()
    assert s._prefetched is not None
    await s._fetch_new(machine, FetchQkdKeys(2))
    await s._install(_install(2, (K1, K2)), 0.1)

    # Slave, the keys the master named; a key_ID the KME gave no extension for.
    await s._fetch_by_id(machine, FetchQkdKeysById((K2,)))
    await s._install(_install(3, (K2, K1)), 0.1)

    # A degraded epoch afterwards names no key (and no stale origin).
    await s._install(InstallKey(4, bytearray(32), ("mlkem768", "x25519"), (),
                                "mlkem768+x25519", True, True), 0.1)
    assert keys.calls == ["fetch_new", "fetch_new", "fetch_by_id"]
    assert s.ctx.telemetry.audit is not None
    s.ctx.telemetry.audit.close()

    audit = tmp_path / "audit.jsonl"
    recs = _epochs(audit)
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4]
    for r in recs[:2]:
        assert r["qkd_key_ids"] == [K1, K2]
        assert [k["route"] for k in r["qkd_keys"]] == ["trusted_relay", "mdi_hub"]
        assert r["qkd_keys"][0]["relays"] == ["KME_LUX_DC"]
        assert r["qkd_keys"][1]["hub"] == "HUB_MQX4000"
    assert recs[2]["qkd_keys"][0]["hub"] == "HUB_MQX4000"
    assert recs[2]["qkd_keys"][1] == {"key_ID": K1}  # not handed to this handshake
    assert recs[3]["qkd_keys"] == [] and recs[3]["qkd_key_ids"] == []
    text = audit.read_text()
    assert KEY1.hex() not in text and base64.b64encode(KEY1).decode() not in text
    assert verify_files([audit]).ok
