"""`qsgw doctor` and the checks `qsgw run` makes before starting tunnels, run as an
operator runs them (a subprocess), plus the tests' `require` helper under CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from _requires import require

from gateway import doctor

from .conftest import BASE, WriteConfig

ROOT = Path(__file__).resolve().parents[2]


def qsgw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env=env)


def _by_check(out: str) -> dict[str, dict[str, object]]:
    return {f["check"]: f for f in json.loads(out)["findings"]}


def test_a_missing_binary_is_named_with_its_package(tmp_path: Path) -> None:
    # PATH holds nothing: every binary the project runs is missing.
    env = {**os.environ, "PATH": str(tmp_path)}
    out = qsgw("doctor", "--json", env=env)
    assert out.returncode == 1, out.stdout  # setup installs these: setup is incomplete
    found = _by_check(out.stdout)
    assert found["wireguard-go binary"]["status"] == "missing"
    assert found["wireguard-go binary"]["fix"] == "apt-get install wireguard-go"
    assert found["nft binary"]["fix"] == "apt-get install nftables"
    assert found["mosquitto_passwd binary"]["fix"] == "apt-get install mosquitto"
    assert json.loads(out.stdout)["setup_complete"] is False
    table = qsgw("doctor", env=env).stdout
    assert "wireguard-go binary" in table and "apt-get install wireguard-go" in table
    assert "missing that `make setup` installs" in table


def test_doctor_here_passes_what_setup_installs() -> None:
    out = qsgw("doctor")
    assert out.returncode == 0, out.stdout  # `make setup` ran: only non-setup gaps may remain
    assert "missing that `make setup` installs" not in out.stdout


def test_charon_itself_reports_openssl_and_gcm_loaded() -> None:
    require("netns", "charon", "unshare")
    found = {f.check: f for f in doctor.charon_plugins(("openssl", "gcm", "vici", "nosuch"))}
    for plugin in ("openssl", "gcm", "vici"):
        f = found[f"charon plugin {plugin}"]
        assert f.ok and f.detail == "loaded by a test charon", f
    # Asked of charon, not of the file system: a plugin it could not load is missing.
    nosuch = found["charon plugin nosuch"]
    assert nosuch.status == "missing" and nosuch.detail == "charon did not load it"


def test_doctor_for_a_config_checks_its_tunnel_and_file_modes(
    write_config: WriteConfig, site: Path
) -> None:
    path = write_config(BASE.replace("      type: wireguard\n",
                                     "      type: wireguard\n"
                                     "      wireguard_go: /nonexistent/wireguard-go\n"))
    os.chmod(site / "wg" / "wg-b.key", 0o644)
    out = qsgw("doctor", "-c", str(path), "--json")
    found = _by_check(out.stdout)
    wg = found["/nonexistent/wireguard-go binary"]
    assert wg["status"] == "missing" and wg["fix"] == "apt-get install wireguard-go"
    key = found[f"gw-b WireGuard key {site / 'wg' / 'wg-b.key'}"]
    assert key["status"] == "missing" and key["fix"] == f"chmod 600 {site / 'wg' / 'wg-b.key'}"
    assert found[f"KME client key {site / 'kme' / 'sae.key'}"]["status"] == "ok"
    assert "charon daemon" not in found  # no IPsec peer: charon is not this config's need


def test_run_refuses_a_tunnel_type_it_cannot_run(write_config: WriteConfig) -> None:
    path = write_config(BASE.replace("      type: wireguard\n",
                                     "      type: wireguard\n"
                                     "      wireguard_go: /nonexistent/wireguard-go\n"))
    out = qsgw("run", "-c", str(path))
    assert out.returncode == 1
    assert "cannot run this config's tunnels" in out.stderr
    assert "/nonexistent/wireguard-go" in out.stderr
    assert "apt-get install wireguard-go" in out.stderr


def test_crypto_flag_has_its_slot() -> None:
    out = qsgw("doctor", "--crypto", "--json")
    assert "crypto inventory" in out.stdout or "algorithm" in out.stdout


def _pytest_with(tmp_path: Path, body: str, ci: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_needs.py").write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT / "tests")
    env["PATH"] = str(tmp_path)  # so wireguard-go is missing in there
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(tmp_path / "test_needs.py")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env=env)


NEEDS = """
from _requires import require

def test_needs_wireguard_go():
    require("wireguard-go")

def test_needs_a_kernel_module():
    require("kernel-qsgw_no_such_module")
"""


def test_require_skips_outside_ci_and_fails_under_ci(tmp_path: Path) -> None:
    plain = _pytest_with(tmp_path, NEEDS, ci=False)
    assert "2 skipped" in plain.stdout, plain.stdout
    assert "`make setup` installs it" in plain.stdout

    ci = _pytest_with(tmp_path, NEEDS, ci=True)
    assert "1 failed, 1 skipped" in ci.stdout, ci.stdout
    assert "`make setup` should have installed wireguard-go" in ci.stdout
    assert "apt-get install wireguard-go" in ci.stdout
    # A kernel module is no install step: it skips, and says why, even under CI.
    assert "no setup can install it here" in ci.stdout
