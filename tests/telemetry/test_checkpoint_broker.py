"""The audit checkpoint leaves the box retained on a real mosquitto, and
`qsgw audit verify --checkpoint-from-broker` catches the trail being cut behind it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.identity import LocalIdentity
from gateway.telemetry.audit_sign import SIG_SUFFIX
from gateway.telemetry.checkpoint_fetch import checkpoint_topic
from gateway.telemetry.setup import build_telemetry

from .conftest import Broker

GW = "gw-ckpt"


def _config(tmp_path: Path, b: Broker) -> Path:
    ident = tmp_path / "identity"
    LocalIdentity.generate().save(ident)
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway:\n  id: {GW}\n  identity_dir: {ident}\n  state_dir: {tmp_path / 'state'}\n"
        "kme:\n  sae_id: SAE_A_GW\n  endpoints:\n    - url: https://192.0.2.10:8443\n"
        "      kme_id: KME_A\n  ca_file: kme/ca.pem\n  cert_file: kme/sae.pem\n"
        "  key_file: kme/sae.key\n"
        "telemetry:\n  audit:\n    rotate_bytes: 4096\n    sign: true\n"
        f"  mqtt:\n    host: 127.0.0.1\n    port: {b.port}\n    ca_file: {b.ca_file}\n"
        f"    username: {b.username}\n    password_file: {b.password_file}\n"
    )
    return path


async def _write_trail(config_path: Path, records: int) -> Path:
    """A daemon's telemetry: audit records, then the checkpoint, published to the broker."""
    cfg = load_config(config_path, check_files=False)
    cfg.gateway.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tel = build_telemetry(cfg, LocalIdentity.load(cfg.gateway.identity_dir))
    assert tel.audit is not None and tel.mqtt is not None
    await tel.start()
    for i in range(records):
        tel.audit.append({"type": "epoch", "peer": "gw-b", "epoch": i + 1})
    tel.audit_checkpoint()
    for _ in range(100):  # until the retained checkpoint has gone out
        if tel.mqtt.connected and tel.mqtt.pending() == 0:
            break
        await asyncio.sleep(0.1)
    await tel.stop()  # publishes the final checkpoint too
    return tel.audit.path


async def _retained(b: Broker) -> list[tuple[bytes, bool]]:
    """What a subscriber arriving later gets at the checkpoint topic."""
    got: list[tuple[bytes, bool]] = []
    async with aiomqtt.Client("127.0.0.1", b.port, username=b.username,
                              password=b.password_file.read_text().strip(),
                              tls_params=aiomqtt.TLSParameters(ca_certs=str(b.ca_file))) as c:
        await c.subscribe(checkpoint_topic("qsgw", GW), qos=1)
        try:
            async with asyncio.timeout(5):
                async for msg in c.messages:
                    assert isinstance(msg.payload, bytes)
                    got.append((msg.payload, bool(msg.retain)))
                    break
        except TimeoutError:
            pass
    return got


def _verify(config: Path, files: list[Path], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["audit", "verify", *map(str, files), "--identity", str(config.parent / "identity"),
               "--checkpoint-from-broker", str(config)])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def _trail_files(active: Path) -> list[Path]:
    return sorted(p for p in active.parent.glob("audit*.jsonl"))


async def test_the_checkpoint_is_retained_and_catches_a_truncated_trail(
        tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, broker)
    active = await _write_trail(config, 12)
    retained = await _retained(broker)
    assert len(retained) == 1 and retained[0][1] is True, retained  # a retained message
    assert b'"records": 12' in retained[0][0] or b'"records":12' in retained[0][0]

    files = _trail_files(active)
    rc, out = await asyncio.to_thread(_verify, config, files, capsys)
    assert rc == 0 and "checkpoint from the broker: 12 records" in out, out

    lines = active.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 2
    active.write_bytes(b"".join(lines[:-1]))  # the newest record dropped; the chain still holds
    rc, out = await asyncio.to_thread(_verify, config, files, capsys)
    assert rc == 1 and "truncated" in out and "#11" in out, out


async def test_deleting_the_newest_rotated_file_with_its_sig_is_caught(
        tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, broker)
    active = await _write_trail(config, 150)  # rotates at 4 KiB: several signed files
    rotated = [p for p in _trail_files(active) if p != active]
    assert len(rotated) >= 3, rotated
    newest = rotated[-1]
    sig = newest.with_name(newest.name + SIG_SUFFIX)
    assert sig.exists()
    # What an attacker with file access does: the newest rotated file, its .sig and the
    # active file go; what is left is an intact, signed chain.
    for p in (newest, sig, active):
        p.unlink()
    rc, out = await asyncio.to_thread(_verify, config, _trail_files(active), capsys)
    assert rc == 1 and "truncated" in out and "#149" in out, out


async def test_no_retained_checkpoint_is_a_clear_error(
        tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, broker)
    (tmp_path / "audit.jsonl").write_bytes(b"")
    rc = await asyncio.to_thread(main, [
        "audit", "verify", str(tmp_path / "audit.jsonl"), "--identity", str(tmp_path / "identity"),
        "--checkpoint-from-broker", str(config)])
    err = capsys.readouterr().err
    assert rc == 2 and "no retained checkpoint" in err and checkpoint_topic("qsgw", GW) in err, err
