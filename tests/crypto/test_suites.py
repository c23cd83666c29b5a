"""Suite lookup and the optional liboqs provider."""

from __future__ import annotations

import pytest
from _requires import require

from gateway.crypto import oqs_provider
from gateway.crypto.suites import (
    SUITE_NAMES,
    ProviderMissingError,
    SuiteError,
    UnknownSuiteError,
    lookup_suite,
)

NO_LIBOQS = oqs_provider.find_liboqs() is None


@pytest.fixture
def needs_liboqs() -> None:
    require("liboqs")  # `make setup` builds it (pending: skips with the reason until then)


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


@pytest.mark.skipif(not NO_LIBOQS, reason="liboqs is installed here")
@pytest.mark.parametrize("name", ["frodo976aes", "frodo1344shake", "mceliece460896f", "hqc192"])
def test_liboqs_suite_without_liboqs_says_how_to_install(name: str) -> None:
    with pytest.raises(ProviderMissingError) as err:
        lookup_suite(name)
    msg = str(err.value)
    assert "liboqs" in msg and "pip install 'qsgw[oqs]'" in msg and name in msg
    assert not oqs_provider.available()  # and it never imported `oqs`
    import sys
    assert "oqs" not in sys.modules


@pytest.mark.usefixtures("needs_liboqs")
@pytest.mark.parametrize("name", ["frodo976aes", "frodo1344shake", "hqc192"])
def test_liboqs_kems_agree(name: str) -> None:
    suite = lookup_suite(name)
    for kem in suite.kems:
        pair = kem.generate()
        shared, ct = kem.encapsulate(pair.public)
        assert kem.decapsulate(pair, ct) == shared


@pytest.mark.usefixtures("needs_liboqs")
def test_mceliece_is_static() -> None:
    suite = lookup_suite("mceliece460896f")
    assert "Classic-McEliece-460896f" in suite.static_kems
    assert "ML-KEM-768" in suite.kem_names
