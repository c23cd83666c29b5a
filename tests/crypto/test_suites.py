"""Suite lookup and the liboqs provider: every suite's KEMs run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.crypto import builtin, oqs_provider
from gateway.crypto.suites import (
    BUILTIN_SUITE_NAMES,
    SUITE_NAMES,
    ProviderMissingError,
    SuiteError,
    UnknownSuiteError,
    lookup_suite,
)
from tests.liboqs_gate import liboqs, require_liboqs

__all__ = ["liboqs"]

OQS_SUITES = [n for n in SUITE_NAMES if n not in BUILTIN_SUITE_NAMES]


def test_default_suite() -> None:
    s = lookup_suite("default")
    assert s.kem_names == ("ML-KEM-768", "X25519")
    assert [x.name for x in s.signatures] == ["Ed25519", "ML-DSA-65"]
    assert lookup_suite("mlkem1024").kem_names == ("ML-KEM-1024", "X25519")


def test_unknown_suite_lists_allowed_names() -> None:
    with pytest.raises(UnknownSuiteError) as err:
        lookup_suite("rot13")
    assert isinstance(err.value, SuiteError)
    for name in SUITE_NAMES:
        assert name in str(err.value)
    # liboqs 0.16 renamed HQC: the old suite name is gone, and the error lists the new one.
    with pytest.raises(UnknownSuiteError, match="hqc3"):
        lookup_suite("hqc192")


@pytest.mark.parametrize("name", ["frodo976aes", "mceliece460896f", "hqc3"])
def test_liboqs_suite_without_liboqs_says_how_to_install(
    name: str, tmp_path: Path, liboqs: None
) -> None:
    # A python whose prefix has no liboqs and no OQS_INSTALL_PATH: the suite is refused
    # with the remedy, and `oqs` (whose import would try to download liboqs) is never imported.
    code = (
        "import sys; from gateway.crypto.suites import lookup_suite, ProviderMissingError\n"
        "from gateway.crypto import oqs_provider\n"
        f"oqs_provider.sys.prefix = {str(tmp_path)!r}\n"
        "oqs_provider.ctypes.util.find_library = lambda name: None\n"
        f"try:\n    lookup_suite({name!r})\nexcept ProviderMissingError as e:\n"
        "    print(str(e)); print('oqs' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OQS_INSTALL_PATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout.splitlines()
    assert len(out) == 2, out
    assert name in out[0] and "liboqs" in out[0] and "make setup" in out[0]
    assert out[1] == "False"


@pytest.mark.parametrize("name", OQS_SUITES)
def test_every_liboqs_suite_loads_and_its_kems_agree(name: str, liboqs: None) -> None:
    suite = lookup_suite(name)
    assert suite.kem_names[-1] == "X25519"
    for kem in suite.kems:
        pair = kem.generate()
        shared, ct = kem.encapsulate(pair.public)
        assert len(ct) == kem.ciphertext_size and len(pair.public) == kem.public_key_size
        assert kem.decapsulate(pair, ct) == shared


def test_hqc_is_liboqs_016_hqc3(liboqs: None) -> None:
    (hqc, _x) = lookup_suite("hqc3").kems
    assert hqc.name == "HQC-3"
    assert (hqc.public_key_size, hqc.ciphertext_size) == (4514, 8978)


def test_mceliece_is_static(liboqs: None) -> None:
    suite = lookup_suite("mceliece460896f")
    assert "Classic-McEliece-460896f" in suite.static_kems
    assert suite.kem_names == ("Classic-McEliece-460896f", "ML-KEM-768", "X25519")


@pytest.mark.parametrize("level", ["ML-KEM-768", "ML-KEM-1024"])
def test_mlkem_cryptography_and_liboqs_interoperate(level: str, liboqs: None) -> None:
    ours = builtin.KEMS[level]
    theirs = oqs_provider.OqsKem(level)
    for enc, dec in ((ours, theirs), (theirs, ours)):
        pair = dec.generate()
        shared, ct = enc.encapsulate(pair.public)
        assert dec.decapsulate(pair, ct) == shared, f"{enc} -> {dec}"


def test_pinned_liboqs_loads_offline_with_an_empty_home(tmp_path: Path) -> None:
    require_liboqs()
    # No OQS_INSTALL_PATH, an empty HOME, and (as root) no network: the import
    # still finds the build `make setup` put into the venv and never fetches one.
    code = (
        "import json; from gateway.crypto import oqs_provider as p; oqs = p.load_oqs()\n"
        "print(json.dumps({'version': oqs.oqs_version(), 'path': oqs.native()._name,"
        " 'kems': list(oqs.get_enabled_kem_mechanisms())}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OQS_INSTALL_PATH", "HOME")}
    env["HOME"] = str(tmp_path)
    argv = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        argv = ["unshare", "--net", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["version"] == oqs_provider.PINNED_VERSION
    assert got["path"].startswith(os.path.join(sys.prefix, "opt", "liboqs"))
    for kem in ("FrodoKEM-1344-SHAKE", "HQC-3", "Classic-McEliece-6688128f", "ML-KEM-1024"):
        assert kem in got["kems"]
    assert list(tmp_path.iterdir()) == [], "liboqs-python wrote into HOME"


def test_provider_missing_error_is_a_suite_error() -> None:
    assert issubclass(ProviderMissingError, SuiteError)
