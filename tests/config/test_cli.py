"""`qsgw check` as an operator runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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


def test_ok(write_config: WriteConfig) -> None:
    out = qsgw("check", "-c", str(write_config()))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "OK: gw-a, 1 peer (gw-b: wireguard)\n"


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
