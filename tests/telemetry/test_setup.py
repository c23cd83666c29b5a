"""build_telemetry: the config's telemetry section turns on exactly the sinks it names."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.config import load_config
from gateway.identity import LocalIdentity
from gateway.telemetry.audit_verify import verify_files
from gateway.telemetry.setup import build_telemetry

CONFIG = """\
gateway:
  id: gw-a
  identity_dir: identity
  state_dir: state
kme:
  sae_id: SAE_A_GW
  endpoints:
    - url: https://192.0.2.10:8443
      kme_id: KME_A
  ca_file: kme/ca.pem
  cert_file: kme/sae.pem
  key_file: kme/sae.key
  pool_low_threshold: 25
"""


def test_nothing_configured_means_audit_only(tmp_path: Path) -> None:
    # MQTT and metrics are off unless configured; the audit trail is always kept.
    text = CONFIG.replace("state_dir: state", f"state_dir: {tmp_path / 'state'}")
    (tmp_path / "gateway.yaml").write_text(text)
    cfg = load_config(tmp_path / "gateway.yaml", check_files=False)
    cfg.gateway.state_dir.mkdir(parents=True, exist_ok=True)
    tel = build_telemetry(cfg)
    assert tel.metrics is None and tel.mqtt is None
    assert tel.audit is not None and tel.audit.path == cfg.gateway.state_dir / "audit.jsonl"
    tel.audit.close()
    assert tel.alarm_settings.pool_low_threshold == 25


def test_configured_sinks_are_built(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(
        CONFIG + "telemetry:\n"
        "  metrics:\n    listen: 127.0.0.1:19814\n"
        "  mqtt:\n    host: 127.0.0.1\n    port: 8883\n    queue_size: 50\n"
        "  audit:\n    rotate_bytes: 4096\n    sign: true\n"
        "  alarms:\n    handshake_failures: 5\n"
    )
    cfg = load_config(tmp_path / "gateway.yaml", check_files=False)
    identity = LocalIdentity.generate()
    tel = build_telemetry(cfg, identity)
    assert tel.mqtt is not None and tel.mqtt.settings.queue_size == 50
    assert tel.mqtt.status_topic == "qsgw/gw-a/status"
    assert tel.metrics is not None and tel.metrics.settings.port == 19814
    assert tel.alarm_settings.handshake_failure_threshold == 5
    assert tel.audit is not None
    assert tel.audit.path == cfg.gateway.state_dir / "audit.jsonl"
    for i in range(40):  # rotates at 4 KiB: the rotated files get signed
        tel.audit.append({"type": "epoch", "peer": "gw-b", "epoch": i})
    tel.audit.close()
    files = sorted(tel.audit.path.parent.glob("audit*.jsonl"))
    assert len(files) > 1
    from gateway.telemetry.audit_sign import HybridVerifier

    pub = identity.public
    result = verify_files(files, HybridVerifier.from_public_identity(pub.ed25519, pub.mldsa65))
    assert result.ok and result.signed_files == len(files) - 1
    assert json.loads(files[0].read_bytes().splitlines()[0])["seq"] == 0
