"""`qsgw check` as an operator runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.crypto import oqs_provider
from gateway.identity import PublicIdentity

from .conftest import BASE, WriteConfig
from .test_examples import EXAMPLES

ROOT = Path(__file__).resolve().parents[2]


def qsgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_ok(write_config: WriteConfig, peer_identity: str) -> None:
    out = qsgw("check", "-c", str(write_config()))
    assert out.returncode == 0, out.stderr
    # The peer's fingerprint, in the words `qsgw keygen` printed it on the peer.
    fp = PublicIdentity.from_text(peer_identity).fingerprint()
    assert out.stdout == f"OK: gw-a, 1 peer (gw-b: wireguard)\n  peer gw-b: fingerprint {fp}\n"


def test_keygen_and_check_print_the_same_fingerprint(tmp_path: Path) -> None:
    made = qsgw("keygen", "--out", str(tmp_path / "id"))
    assert made.returncode == 0, made.stderr
    comment, text = made.stdout.splitlines()
    keygen_form = comment.removeprefix("# ").split(";")[0]
    assert keygen_form == f"fingerprint {PublicIdentity.from_text(text).fingerprint()}"
    from gateway import config_cli
    from gateway.config import parse_config

    cfg = parse_config(BASE.replace("{identity}", text).replace("{wgkey}", "A" * 43 + "="),
                       check_files=False)
    assert config_cli.fingerprints(cfg) == [f"  peer gw-b: {keygen_form}"]


def _one_char_typo(identity: str, part: int, at: int = 5) -> str:
    """`identity` with one base64 character of key `part` (0 Ed25519, 1 ML-DSA) changed."""
    head, body = identity.split(":", 1)
    parts = body.split(".")
    c = parts[part][at]
    parts[part] = parts[part][:at] + ("B" if c != "B" else "C") + parts[part][at + 1:]
    return f"{head}:{'.'.join(parts)}"


def test_a_one_character_typo_in_either_key_is_refused(
    write_config: WriteConfig, peer_identity: str
) -> None:
    ed_last = len(peer_identity.split(":")[1].split(".")[0]) - 2  # before the "=": 2 spare bits
    for typo in (_one_char_typo(peer_identity, 0), _one_char_typo(peer_identity, 1),
                 _one_char_typo(peer_identity, 1, at=1000), _one_char_typo(peer_identity, 0,
                                                                          at=ed_last)):
        assert typo != peer_identity
        path = write_config(BASE.replace("{identity}", typo))
        out = qsgw("check", "-c", str(path))
        assert out.returncode == 1, typo
        assert f"{path}:16:" in out.stderr and "peers[0].identity" in out.stderr
        assert "checksum mismatch" in out.stderr and "mistyped" in out.stderr


def test_a_v1_identity_is_refused_with_how_to_get_v2(
    write_config: WriteConfig, peer_identity: str
) -> None:
    body = peer_identity.split(":", 1)[1].rsplit(".", 1)[0]
    out = qsgw("check", "-c", str(write_config(BASE.replace("{identity}", f"qsgw-id-v1:{body}"))))
    assert out.returncode == 1
    assert "no checksum" in out.stderr and "qsgw keygen --out DIR --show" in out.stderr


def test_errors_one_per_line_with_file_line_column_field(write_config: WriteConfig) -> None:
    text = BASE.replace("  id: gw-a\n", "  id: gw-a\n  colour: blue\n")
    path = write_config(text.replace("listen_port: 51820", "listen_port: fast"))
    out = qsgw("check", "--config", str(path))
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert lines[0].startswith(f"{path}:3:3: gateway.colour: unknown key 'colour'")
    assert lines[1] == f"{path}:25:20: peers[0].tunnel.listen_port: must be an integer"
    assert lines[2] == f"{path}: 2 errors"
    pattern = re.compile(rf"^{re.escape(str(path))}:\d+:\d+: [\w.\[\]]+: .+$")
    assert all(pattern.match(line) for line in lines[:-1])


def test_file_checks_can_be_skipped(write_config: WriteConfig, site: Path) -> None:
    os.chmod(site / "kme" / "sae.key", 0o644)
    path = write_config()
    refused = qsgw("check", "-c", str(path))
    assert refused.returncode == 1 and "chmod 600" in refused.stderr
    assert qsgw("check", "-c", str(path), "--no-file-checks").returncode == 0


def test_liboqs_advice_is_printed_once(write_config: WriteConfig,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # A fake for the one fault `make setup` cannot show: liboqs absent.
    from gateway import config_cli

    def missing(name: str) -> None:
        raise oqs_provider.OqsUnavailable(oqs_provider.MISSING_LIBRARY_REASON)

    monkeypatch.setattr(oqs_provider, "OqsKem", missing)
    second = BASE.split("peers:\n", 1)[1].replace("id: gw-b", "id: gw-c").replace(
        "interface: wg-b", "interface: wg-c").replace("51820", "51821")
    text = (BASE + second).replace("suite: default", "suite: frodo976aes")
    parser = argparse.ArgumentParser()
    config_cli.add_arguments(parser)
    assert config_cli.run(parser.parse_args(["-c", str(write_config(text))])) == 1
    err = capsys.readouterr().err
    assert err.count("peers[0].suite") == 1 and err.count("peers[1].suite") == 1
    assert err.count("pip install") == 1 and "make setup" in err


def test_status_without_config_or_socket_says_use_c_or_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.daemon import status_cli

    monkeypatch.setattr(status_cli, "DEFAULT_CONFIG_PATH", tmp_path / "absent.yaml")
    parser = argparse.ArgumentParser()
    status_cli.add_arguments(parser)
    assert status_cli.run(parser.parse_args([])) == 2
    err = capsys.readouterr().err
    assert "-c FILE" in err and "-s SOCKET" in err


def test_status_that_gets_no_answer_says_how_long_it_waited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon too busy to answer: the CLI gives up at --timeout and says so."""
    import socket

    from gateway.daemon import status_cli

    path = tmp_path / "status.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)  # accepted by the kernel, never answered
        parser = argparse.ArgumentParser()
        status_cli.add_arguments(parser)
        args = parser.parse_args(["-s", str(path), "--json", "--timeout", "0.3"])
        assert status_cli.run(args) == 1
    err = capsys.readouterr().err
    assert "no answer within 0.3 s (--timeout)" in err


def test_missing_config_file(tmp_path: Path) -> None:
    out = qsgw("check", "-c", str(tmp_path / "absent.yaml"))
    assert out.returncode == 1
    assert out.stderr.startswith(f"{tmp_path / 'absent.yaml'}: config file not found")


def test_bad_arguments_are_a_usage_error() -> None:
    out = qsgw("check", "--frobnicate")
    assert out.returncode == 2 and "usage" in out.stderr


def test_examples_pass() -> None:
    for example in EXAMPLES:
        out = qsgw("check", "-c", str(example), "--no-file-checks")
        assert out.returncode == 0, (example.name, out.stderr)
        assert out.stdout.startswith("OK: gw-")
