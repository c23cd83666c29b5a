"""`qsgw firewall`: the appliance's default-deny nftables ruleset, made from gateway.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import parse_config
from gateway.firewall import ruleset

ROOT = Path(__file__).resolve().parents[2]
INTA = ROOT / "configs" / "madqci" / "inta.yaml"
REDU = ROOT / "configs" / "int-uqkd" / "redu.yaml"


def _no_dns(host: str) -> list[str]:
    raise AssertionError(f"resolved {host!r}: the examples use IP literals")


def _chain(text: str, name: str) -> list[str]:
    body = text.split(f"chain {name} {{")[1].split("}\n")[0]
    return [line.strip() for line in body.splitlines() if line.strip()]


def test_default_deny_admits_what_the_config_names() -> None:
    cfg = parse_config(INTA.read_text(), str(INTA), check_files=False)
    text = ruleset(cfg, _no_dns)
    for chain in ("input", "forward", "output"):
        assert "policy drop;" in _chain(text, chain)[0]
    inp, out = _chain(text, "input"), _chain(text, "output")
    for peer in cfg.peers:
        ctl = f"ip saddr {{ {peer.control.host}/32 }} tcp dport {cfg.control.listen.port} accept"
        assert ctl in inp  # the control port from this peer only
        assert f"ip daddr {{ {peer.control.host}/32 }} tcp dport {peer.control.port} accept" \
            in out
    # Nothing admitted to the control port from anywhere else.
    assert not any(f"tcp dport {cfg.control.listen.port}" in r and "saddr" not in r for r in inp)
    for ep in cfg.kme.endpoints:
        host = ep.url.split("//")[1].split(":")[0].strip("[]")
        assert any(host in r and "tcp dport" in r for r in out), ep.url


def test_ipsec_is_admitted_only_as_ipsec() -> None:
    doc = yaml.safe_load(REDU.read_text())
    cfg = parse_config(yaml.safe_dump(doc), str(REDU), check_files=False)
    text = ruleset(cfg, _no_dns)
    ipsec = [p for p in cfg.peers if p.tunnel.type == "ipsec"]
    assert ipsec
    t = ipsec[0].tunnel
    inp, out = _chain(text, "input"), _chain(text, "output")
    remote = t.remote_addrs[0]  # type: ignore[union-attr]
    assert any(remote in r and "udp dport { 500, 4500 }" in r for r in inp)
    assert any(remote in r and "esp" in r for r in inp)
    # Inner traffic: decapsulated in, and out only through an IPsec policy.
    assert any("meta ipsec exists" in r for r in inp)
    assert all("rt ipsec exists" in r for r in out
               if any(ts.split("/")[0] in r for ts in t.remote_ts))  # type: ignore[union-attr]


def test_route_based_ipsec_admits_its_xfrm_interface() -> None:
    doc = yaml.safe_load(REDU.read_text())
    peer = next(p for p in doc["peers"] if p["tunnel"]["type"] == "ipsec")
    peer["tunnel"]["xfrm_interface"] = {"name": "ipsec7", "if_id": 7,
                                        "addresses": ["10.7.0.1/32"], "routes": ["10.8.0.0/24"]}
    cfg = parse_config(yaml.safe_dump(doc), str(REDU), check_files=False)
    text = ruleset(cfg, _no_dns)
    assert any('oifname "ipsec7"' in r and "10.8.0.0/24" in r for r in _chain(text, "output"))
    assert any('iifname "ipsec7"' in r for r in _chain(text, "forward"))


@pytest.mark.skipif(os.geteuid() != 0, reason="nft -c needs root")
def test_nft_accepts_the_ruleset(tmp_path: Path) -> None:
    for example in (INTA, REDU):
        out = subprocess.run([sys.executable, "-m", "gateway.cli", "firewall", "--no-file-checks",
                              "-c", str(example)], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, check=False)
        assert out.returncode == 0, out.stderr
        rules = tmp_path / "rules.nft"
        rules.write_text(out.stdout)
        check = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True,
                               timeout=30, check=False)
        assert check.returncode == 0, f"{example.name}: {check.stderr}"
