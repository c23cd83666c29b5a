"""Every kind of config error names the file, the line and the field, and says what is allowed."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from gateway.config import (
    ConfigError,
    ConfigIssue,
    GatewayConfig,
    HostPort,
    WireGuardTunnel,
    load_config,
)

from .conftest import BASE, WriteConfig


def errors_of(path: Path, **kwargs: bool) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    assert str(path) in str(info.value)
    assert all(e.file == str(path) for e in info.value.errors)
    return info.value.errors


def the_error(path: Path, field: str) -> ConfigIssue:
    errors = errors_of(path)
    found = [e for e in errors if e.field == field]
    assert found, f"no error for {field}; got {errors}"
    return found[0]


def test_minimal_config_loads_with_typed_values(write_config: WriteConfig, site: Path) -> None:
    cfg = load_config(write_config())
    assert isinstance(cfg, GatewayConfig)
    peer = cfg.peer("gw-b")
    assert peer.control == HostPort("192.0.2.2", 7814)
    assert isinstance(peer.tunnel, WireGuardTunnel)
    # relative paths resolve against the config file's directory
    assert peer.tunnel.private_key_file == site / "wg" / "wg-b.key"
    assert cfg.gateway.identity_dir == site / "identity"
    assert [str(n) for n in peer.tunnel.allowed_ips] == ["203.0.113.2/32"]
    # defaults
    assert cfg.control.listen == HostPort("0.0.0.0", 7814)
    assert peer.role == "auto" and peer.qkd == "required"
    assert cfg.telemetry.mqtt is None and cfg.telemetry.metrics is None


def test_settings_are_frozen(write_config: WriteConfig) -> None:
    cfg = load_config(write_config())
    with pytest.raises(ValueError, match="frozen"):
        cfg.gateway.id = "other"  # type: ignore[misc]


def test_unknown_key(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("  id: gw-a\n", "  id: gw-a\n  colour: blue\n"))
    e = the_error(path, "gateway.colour")
    assert (e.line, e.column) == (3, 3)
    assert "unknown key 'colour'" in e.message
    assert "identity_dir" in e.message and "on_shutdown" in e.message  # what is allowed


def test_unknown_key_inside_tunnel_lists_that_tunnel_types_keys(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("      listen_port: 51820\n", "      listen_prot: 51820\n"))
    e = the_error(path, "peers[0].tunnel.listen_prot")
    assert e.line == 24
    assert "listen_port" in e.message and "peer_public_key" in e.message


def test_wrong_type(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("listen_port: 51820", "listen_port: fast"))
    e = the_error(path, "peers[0].tunnel.listen_port")
    assert (e.line, e.column) == (24, 20)
    assert "must be an integer" in e.message


def test_quoted_number_is_not_silently_coerced(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("listen_port: 51820", 'listen_port: "51820"'))
    assert "must be an integer" in the_error(path, "peers[0].tunnel.listen_port").message


def test_port_out_of_range(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("listen_port: 51820", "listen_port: 70000"))
    e = the_error(path, "peers[0].tunnel.listen_port")
    assert "65535" in e.message


def test_bad_enum(write_config: WriteConfig) -> None:
    path = write_config(
        BASE.replace("    suite: default\n", "    suite: default\n    role: boss\n")
    )
    e = the_error(path, "peers[0].role")
    assert e.line == 20
    assert "'auto'" in e.message and "'initiator'" in e.message and "'responder'" in e.message


def test_bad_tunnel_type(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("type: wireguard", "type: gre"))
    e = the_error(path, "peers[0].tunnel.type")
    assert e.line == 21
    assert "'gre'" in e.message and "wireguard" in e.message and "ipsec" in e.message


def test_missing_required_field_points_at_its_mapping(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("    sae_id: SAE_B_GW\n", ""))
    e = the_error(path, "peers[0].sae_id")
    assert e.line == 13  # the peer's mapping starts at its `id:` line
    assert "required" in e.message


SECOND_PEER = """\
  - id: gw-c
    sae_id: SAE_C_GW
    control: "192.0.2.3:7814"
    identity: "{identity}"
    tunnel:
      type: wireguard
      interface: wg-c
      private_key_file: wg/wg-a.key
      listen_port: 51821
      peer_public_key: "{wgkey}"
      allowed_ips: [203.0.113.3/32]
"""


def test_two_peers_load(write_config: WriteConfig) -> None:
    cfg = load_config(write_config(BASE + SECOND_PEER))
    assert [p.id for p in cfg.peers] == ["gw-b", "gw-c"]


@pytest.mark.parametrize(
    ("old", "new", "field", "what"),
    [
        ("id: gw-c", "id: gw-b", "peers[1].id", "peer id 'gw-b'"),
        ("sae_id: SAE_C_GW", "sae_id: SAE_B_GW", "peers[1].sae_id", "SAE ID 'SAE_B_GW'"),
        ("interface: wg-c", "interface: wg-b", "peers[1].tunnel.interface", "interface 'wg-b'"),
        ("listen_port: 51821", "listen_port: 51820", "peers[1].tunnel.listen_port", "port '51820'"),
    ],
)
def test_duplicate_across_peers(
    write_config: WriteConfig, old: str, new: str, field: str, what: str
) -> None:
    path = write_config(BASE + SECOND_PEER.replace(old, new))
    e = the_error(path, field)
    assert e.line > 28  # in the second peer, not the first
    assert "duplicate" in e.message and what in e.message and "peers[0]" in e.message


def test_peer_with_the_gateways_own_id(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("  - id: gw-b", "  - id: gw-a"))
    e = the_error(path, "peers[0].id")
    assert e.line == 13 and "own id" in e.message


def test_peer_with_the_gateways_own_sae_id(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("sae_id: SAE_B_GW", "sae_id: SAE_A_GW"))
    e = the_error(path, "peers[0].sae_id")
    assert e.line == 14 and "own SAE ID" in e.message


def test_duplicate_yaml_key(write_config: WriteConfig) -> None:
    path = write_config(
        BASE.replace(
            "    key_lifetime_s: 300\n", "    key_lifetime_s: 300\n    key_lifetime_s: 900\n"
        )
    )
    e = the_error(path, "peers[0].key_lifetime_s")
    assert e.line == 19
    assert "duplicate key 'key_lifetime_s'" in e.message and "line 18" in e.message


def test_missing_file(write_config: WriteConfig, site: Path) -> None:
    path = write_config(BASE.replace("key_file: kme/sae.key", "key_file: kme/nope.key"))
    e = the_error(path, "kme.key_file")
    assert e.line == 11
    assert "file not found" in e.message and str(site / "kme" / "nope.key") in e.message


def test_missing_files_pass_without_file_checks(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("key_file: kme/sae.key", "key_file: kme/nope.key"))
    cfg = load_config(path, check_files=False)
    assert cfg.kme.key_file.name == "nope.key"


@pytest.mark.parametrize(
    ("relpath", "field", "line"),
    [
        ("kme/sae.key", "kme.key_file", 11),
        ("wg/wg-b.key", "peers[0].tunnel.private_key_file", 23),
        ("identity/mldsa65.key", "gateway.identity_dir", 3),
    ],
)
def test_key_file_readable_by_others(
    write_config: WriteConfig, site: Path, relpath: str, field: str, line: int
) -> None:
    path = write_config()
    os.chmod(site / relpath, 0o644)
    e = the_error(path, field)
    assert e.line == line
    assert "0644" in e.message and "chmod 600" in e.message and str(site / relpath) in e.message


def test_certificates_need_not_be_private(write_config: WriteConfig, site: Path) -> None:
    os.chmod(site / "kme" / "ca.pem", 0o644)
    load_config(write_config())


def test_missing_identity_key(write_config: WriteConfig, site: Path) -> None:
    (site / "identity" / "ed25519.key").unlink()
    e = the_error(write_config(), "gateway.identity_dir")
    assert "ed25519.key" in e.message and "qsgw keygen" in e.message


@pytest.mark.parametrize(
    ("rekey", "lifetime", "field", "words"),
    [
        ("300", "300", "peers[0].key_lifetime_s", "must exceed rekey_interval_s"),
        ("600", "300", "peers[0].key_lifetime_s", "must exceed rekey_interval_s"),
        ("0", "300", "peers[0].rekey_interval_s", "greater than 0"),
        ("-5", "300", "peers[0].rekey_interval_s", "greater than 0"),
    ],
)
def test_impossible_interval(
    write_config: WriteConfig, rekey: str, lifetime: str, field: str, words: str
) -> None:
    text = BASE.replace("rekey_interval_s: 120", f"rekey_interval_s: {rekey}")
    path = write_config(text.replace("key_lifetime_s: 300", f"key_lifetime_s: {lifetime}"))
    e = the_error(path, field)
    assert e.line == (18 if "lifetime" in field else 17)
    assert words in e.message


def test_backoff_max_below_initial(write_config: WriteConfig) -> None:
    text = BASE.replace(
        "    suite: default\n", "    suite: default\n    retry_backoff_s: {initial: 10, max: 5}\n"
    )
    e = the_error(write_config(text), "peers[0].retry_backoff_s.max")
    assert e.line == 20 and ">= initial" in e.message


def test_unknown_suite(write_config: WriteConfig) -> None:
    e = the_error(
        write_config(BASE.replace("suite: default", "suite: kyber-9000")), "peers[0].suite"
    )
    assert e.line == 19
    assert "kyber-9000" in e.message and "default" in e.message and "mlkem1024" in e.message



def test_suite_whose_provider_is_missing(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake for the one fault `make setup` cannot show: liboqs absent.
    from gateway.crypto import oqs_provider

    def missing() -> None:
        raise oqs_provider.OqsUnavailable(oqs_provider.MISSING_LIBRARY_REASON)

    monkeypatch.setattr(oqs_provider, "load_oqs", missing)
    e = the_error(write_config(BASE.replace("suite: default", "suite: hqc3")), "peers[0].suite")
    assert "liboqs" in e.message and "hqc3" in e.message and "make setup" in e.message



def test_liboqs_suite_is_accepted_where_liboqs_is_installed(write_config: WriteConfig) -> None:
    from tests.liboqs_gate import require_liboqs

    require_liboqs()
    path = write_config(BASE.replace("suite: default", "suite: frodo1344shake"))
    from gateway.config import load_config

    assert load_config(path).peers[0].suite == "frodo1344shake"


def test_bad_identity(write_config: WriteConfig) -> None:
    text = BASE.replace('identity: "{identity}"', 'identity: "not-an-identity"')
    e = the_error(write_config(text), "peers[0].identity")
    assert e.line == 16 and "qsgw-id-v2" in e.message and "qsgw keygen" in e.message


def test_identity_with_truncated_keys(write_config: WriteConfig) -> None:
    text = BASE.replace('identity: "{identity}"', 'identity: "qsgw-id-v2:AAAA.BBBB.00000000"')
    e = the_error(write_config(text), "peers[0].identity")
    assert e.line == 16 and "qsgw keygen" in e.message


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("203.0.113.2/33", "not a valid CIDR"),
        ("203.0.113.300/32", "not a valid CIDR"),
        ("203.0.113.2/24", "did you mean 203.0.113.0/24"),
        ("fd00::1/64", "did you mean fd00::/64"),
    ],
)
def test_bad_cidr(write_config: WriteConfig, value: str, words: str) -> None:
    path = write_config(BASE.replace("allowed_ips: [203.0.113.2/32]", f'allowed_ips: ["{value}"]'))
    e = the_error(path, "peers[0].tunnel.allowed_ips[0]")
    assert e.line == 28 and words in e.message


def test_bad_interface_address(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("addresses: [203.0.113.1/24]", "addresses: [203.0.113.1]"))
    e = the_error(path, "peers[0].tunnel.addresses[0]")
    assert e.line == 25 and "prefix length" in e.message


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('"192.0.2.2"', "host:port"),
        ('"192.0.2.2:0"', "1-65535"),
        ('"fd00::2:7814"', "host:port"),
        ('"[fd00::zz]:7814"', "IPv6"),
        ("7814", "must be a string"),
    ],
)
def test_bad_host_port(write_config: WriteConfig, value: str, words: str) -> None:
    path = write_config(BASE.replace('control: "192.0.2.2:7814"', f"control: {value}"))
    e = the_error(path, "peers[0].control")
    assert e.line == 15 and words in e.message


def test_ipv6_and_host_name_endpoints(write_config: WriteConfig) -> None:
    text = BASE.replace('control: "192.0.2.2:7814"', 'control: "[fd00::2]:7814"')
    text = text.replace('endpoint: "198.51.100.2:51820"', 'endpoint: "gw-b.example:51820"')
    peer = load_config(write_config(text)).peers[0]
    assert peer.control == HostPort("fd00::2", 7814) and str(peer.control) == "[fd00::2]:7814"
    assert isinstance(peer.tunnel, WireGuardTunnel)
    assert peer.tunnel.endpoint == HostPort("gw-b.example", 51820)


def test_bad_interface_name(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("interface: wg-b", "interface: wg-much-too-long-name"))
    e = the_error(path, "peers[0].tunnel.interface")
    assert e.line == 22 and "1-15" in e.message


def test_manage_full_needs_private_key(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("      private_key_file: wg/wg-b.key\n", ""))
    e = the_error(path, "peers[0].tunnel.private_key_file")
    assert e.line == 21 and "manage: full" in e.message and "psk-only" in e.message


def test_psk_only_needs_no_private_key(write_config: WriteConfig) -> None:
    text = BASE.replace("      private_key_file: wg/wg-b.key\n", "      manage: psk-only\n")
    tunnel = load_config(write_config(text)).peers[0].tunnel
    assert isinstance(tunnel, WireGuardTunnel)
    assert tunnel.manage == "psk-only" and tunnel.private_key_file is None


@pytest.mark.parametrize(
    "secret",
    [
        base64.b64encode(b"\xfc" * 32).decode(),  # starts with "/" like a path
        base64.b64encode(bytes(range(32))).decode(),
        base64.b64encode(bytes(range(200, 232))).decode(),
        "-----BEGIN " + "PRIVATE KEY-----",  # a PEM header (split: no key in the repo)
    ],
)
def test_pasted_key_is_never_echoed(write_config: WriteConfig, secret: str) -> None:
    # a private key pasted where its file's path belongs
    path = write_config(
        BASE.replace("private_key_file: wg/wg-b.key", f'private_key_file: "{secret}"')
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert secret not in str(info.value) and secret not in repr(info.value)
    e = next(e for e in info.value.errors if e.field == "peers[0].tunnel.private_key_file")
    assert "key material" in e.message and "0600" in e.message
