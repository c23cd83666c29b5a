"""YAML-level config errors: several at once in file order, indentation, syntax, not a config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import (
    ConfigError,
    WireGuardTunnel,
    load_config,
    parse_config,
)

from .conftest import BASE, WriteConfig
from .test_errors import errors_of, the_error


def test_many_errors_at_once_in_file_order(write_config: WriteConfig) -> None:
    text = BASE.replace("  id: gw-a\n", "  id: gw-a\n  colour: blue\n")
    text = text.replace("listen_port: 51820", "listen_port: fast")
    text = text.replace("allowed_ips: [203.0.113.2/32]", "allowed_ips: [203.0.113.2/33]")
    errors = errors_of(write_config(text))
    assert [e.field for e in errors] == [
        "gateway.colour",
        "peers[0].tunnel.listen_port",
        "peers[0].tunnel.allowed_ips[0]",
    ]
    assert [e.line for e in errors] == sorted(e.line for e in errors)


def test_error_tuple_shape(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("listen_port: 51820", "listen_port: fast"))
    file, line, field, message = errors_of(path)[0][:4]
    assert (file, line, field) == (str(path), 24, "peers[0].tunnel.listen_port")
    assert "integer" in message
    assert str(errors_of(path)[0]).startswith(f"{path}:24:20: peers[0].tunnel.listen_port: ")


@pytest.mark.parametrize(
    ("old", "new", "field", "line"),
    [
        ("  ca_file: kme/ca.pem\n", " ca_file: kme/ca.pem\n", "kme", 8),  # too shallow
        ("      interface: wg-b\n", "       interface: wg-b\n", "peers[0].tunnel", 21),
        ("    sae_id: SAE_B_GW\n", "     sae_id: SAE_B_GW\n", "peers[0]", 14),
        ("  identity_dir: identity\n", "\tidentity_dir: identity\n", "gateway", 3),
    ],
)
def test_indentation_error_says_so_and_names_the_enclosing_field(
    write_config: WriteConfig, old: str, new: str, field: str, line: int
) -> None:
    errors = errors_of(write_config(BASE.replace(old, new)))
    assert len(errors) == 1, errors
    e = errors[0]
    assert "bad indentation" in e.message and e.field == field, e
    assert e.line in (line, line + 1)  # PyYAML marks the line it stopped at
    assert ("spaces" in e.message) and "YAML syntax" not in e.message


def test_yaml_syntax_error(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("    sae_id: SAE_B_GW\n", "    sae_id: [SAE_B_GW\n"))
    errors = errors_of(path)
    assert len(errors) == 1 and "YAML syntax" in errors[0].message and errors[0].line >= 14


@pytest.mark.parametrize(
    ("text", "words"),
    [("", "empty"), ("# only a comment\n", "empty"), ("- a\n- b\n", "mapping")],
)
def test_not_a_config(write_config: WriteConfig, text: str, words: str) -> None:
    errors = errors_of(write_config(text))
    assert len(errors) == 1 and words in errors[0].message


def test_yaml_merge_keys_refused(write_config: WriteConfig) -> None:
    text = BASE.replace("    suite: default\n", "    suite: default\n    <<: {qkd: off}\n")
    e = errors_of(write_config(text))[0]
    assert e.line == 20 and "merge keys" in e.message


def test_config_file_not_found(tmp_path: Path) -> None:
    errors = errors_of(tmp_path / "absent.yaml")
    assert "not found" in errors[0].message


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    try:
        parse_config(text, "fuzz.yaml", check_files=False)
    except ConfigError as exc:
        assert exc.errors and all(e.file == "fuzz.yaml" and e.line >= 1 for e in exc.errors)


def test_bad_name(write_config: WriteConfig) -> None:
    e = the_error(write_config(BASE.replace("  id: gw-a", '  id: "gw a/1"')), "gateway.id")
    assert e.line == 2 and "1-64 characters of A-Z a-z 0-9 . _ -" in e.message


def test_long_plain_path_is_not_taken_for_a_key(write_config: WriteConfig) -> None:
    long_path = "/etc/qsgw/identity/keys/wireguard/privatekey"  # 44 base64-alphabet characters
    text = BASE.replace("private_key_file: wg/wg-b.key", f"private_key_file: {long_path}")
    tunnel = load_config(write_config(text), check_files=False).peers[0].tunnel
    assert isinstance(tunnel, WireGuardTunnel) and str(tunnel.private_key_file) == long_path
