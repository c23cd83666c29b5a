"""McEliece suites in the config: the peer's static key pinned, our own key made by keygen."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import pytest

from gateway import static_kem
from gateway.config import ConfigError, load_config
from gateway.daemon.context import DaemonContext
from gateway.identity import LocalIdentity
from tests.crypto.conftest import drive
from tests.liboqs_gate import require_liboqs

from .conftest import BASE, WriteConfig

KEM = "Classic-McEliece-460896f"
SUITE = "mceliece460896f"


@pytest.fixture(scope="module")
def peer_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real static McEliece key of "the peer" (made once: ~0.1 s of keygen)."""
    require_liboqs()
    return static_kem.generate(tmp_path_factory.mktemp("peer-identity"), KEM)


def mceliece(pin: str | None) -> str:
    text = BASE.replace("suite: default", f"suite: {SUITE}")
    if pin is not None:
        text = text.replace(f"suite: {SUITE}\n", f"suite: {SUITE}\n    static_kem: {pin}\n")
    return text


def own_key(site: Path) -> None:
    static_kem.generate(site / "identity", KEM)


def errors(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return {e.field: e.message for e in info.value.errors}


def test_mceliece_suite_without_a_pin_says_what_to_add(write_config: WriteConfig) -> None:
    require_liboqs()
    got = errors(write_config(mceliece(None)))
    msg = got["peers[0].static_kem"]
    assert "public_file" in msg and "sha256" in msg and f"--static-kem {SUITE}" in msg


def test_pin_that_does_not_match_the_file_is_refused(
    write_config: WriteConfig, site: Path, peer_key: tuple[Path, str]
) -> None:
    own_key(site)
    public, digest = peer_key
    wrong = digest[::-1]
    got = errors(write_config(mceliece(f"{{public_file: {public}, sha256: {wrong}}}")))
    msg = got["peers[0].static_kem"]
    assert str(public) in msg and digest in msg and f"not the pinned {wrong}" in msg


def test_pinned_file_missing_or_not_a_key(
    write_config: WriteConfig, site: Path, peer_key: tuple[Path, str]
) -> None:
    own_key(site)
    _, digest = peer_key
    got = errors(write_config(mceliece(f"{{public_file: gw-b.pub, sha256: {digest}}}")))
    assert f"cannot read {site / 'gw-b.pub'}" in got["peers[0].static_kem"]
    (site / "gw-b.pub").write_bytes(b"short")
    got = errors(write_config(mceliece(f"{{public_file: gw-b.pub, sha256: {digest}}}")))
    assert "is 5 bytes, not a Classic-McEliece-460896f public key" in got["peers[0].static_kem"]


def test_own_static_key_missing_names_the_file_and_the_command(
    write_config: WriteConfig, site: Path, peer_key: tuple[Path, str]
) -> None:
    public, digest = peer_key
    got = errors(write_config(mceliece(f"{{public_file: {public}, sha256: {digest}}}")))
    msg = got["peers[0].static_kem"]
    assert str(site / "identity" / "classic-mceliece-460896f.key") in msg
    assert f"qsgw keygen --out {site / 'identity'} --static-kem {SUITE}" in msg


def test_static_kem_on_another_suite_is_refused(
    write_config: WriteConfig, peer_key: tuple[Path, str]
) -> None:
    public, digest = peer_key
    text = BASE.replace("suite: default\n",
                        f"suite: default\n    static_kem: {{public_file: {public}, "
                        f"sha256: {digest}}}\n")
    assert "only the McEliece suites" in errors(write_config(text))["peers[0].static_kem"]


def test_provisioned_gateways_run_a_mceliece_handshake(
    write_config: WriteConfig, site: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Both gateways' configs load, and the keys they name give a working handshake."""
    require_liboqs()
    other = tmp_path_factory.mktemp("gw-b")
    shutil.copytree(site, other, dirs_exist_ok=True)
    ids = {}
    for d in (site, other):
        ident = LocalIdentity.generate()
        ident.save(d / "identity", force=True)
        ids[d] = ident
    pins = {d: static_kem.generate(d / "identity", KEM) for d in (site, other)}
    # Each copies the other's .pub beside its config, as an operator would.
    shutil.copy(pins[other][0], site / "gw-b.pub")
    shutil.copy(pins[site][0], other / "gw-a.pub")
    a_text = mceliece(f"{{public_file: gw-b.pub, sha256: {pins[other][1]}}}")
    cfg_a = load_config(write_config(a_text.replace("{identity}", ids[other].public.to_text())))
    b_text = (mceliece(f"{{public_file: gw-a.pub, sha256: {pins[site][1]}}}")
              .replace("id: gw-a", "id: gw-x").replace("id: gw-b", "id: gw-a")
              .replace("id: gw-x", "id: gw-b")
              .replace("{identity}", ids[site].public.to_text()))
    (other / "gateway.yaml").write_text(b_text.replace("{wgkey}", "x" * 43 + "="))
    cfg_b = load_config(other / "gateway.yaml")

    def ctx(cfg: Any, ident: LocalIdentity) -> DaemonContext:
        return DaemonContext(cfg, ident, cast(Any, None), cast(Any, None), cast(Any, None))

    pa = ctx(cfg_a, ids[site]).handshake_params(cfg_a.peers[0])
    pb = ctx(cfg_b, ids[other]).handshake_params(cfg_b.peers[0])
    assert pa.peer_static_kem_keys[KEM] == pb.static_kem_keys[KEM].public
    assert pb.peer_static_kem_keys[KEM] == pa.static_kem_keys[KEM].public
    run, _, _ = drive(pa, pb)
    assert run.installed_i is not None and run.installed_r is not None
    assert run.installed_i.key == run.installed_r.key
    assert run.installed_i.sources == ("QKD", KEM, "ML-KEM-768", "X25519")
