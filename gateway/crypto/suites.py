"""Named algorithm suites: which KEMs (in order) and which signatures a handshake uses.

The suite name travels in the signed INIT, and both sides must be configured
with the same one, so a suite cannot be downgraded on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.crypto import builtin
from gateway.crypto.providers import Kem, SignatureScheme


class SuiteError(Exception):
    """A suite cannot be used here."""


class UnknownSuiteError(SuiteError):
    """No suite has that name."""


class ProviderMissingError(SuiteError):
    """The suite needs an algorithm from a provider that is not installed."""


@dataclass(frozen=True)
class Suite:
    """An ordered set of KEMs (X25519 last) and the two signature schemes.

    ``static_kems`` names KEMs whose keys are made at provisioning and pinned
    (Classic McEliece); all others are ephemeral, made afresh every epoch.
    """

    name: str
    kems: tuple[Kem, ...]
    signatures: tuple[SignatureScheme, ...] = (builtin.ED25519, builtin.ML_DSA_65)
    static_kems: frozenset[str] = field(default_factory=frozenset)

    @property
    def kem_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.kems)

    def is_static(self, kem: Kem) -> bool:
        return kem.name in self.static_kems


def _builtin_suite(name: str, *kems: Kem) -> Callable[[], Suite]:
    return lambda: Suite(name=name, kems=kems)


def _oqs_suite(name: str, *oqs_names: str, extra: tuple[Kem, ...] = ()) -> Callable[[], Suite]:
    def make() -> Suite:
        # Imported here so that the built-in suites never touch liboqs.
        from gateway.crypto import oqs_provider

        kems: list[Kem] = []
        static: set[str] = set()
        for oqs_name in oqs_names:
            try:
                kem = oqs_provider.OqsKem(oqs_name)
            except oqs_provider.OqsUnavailable as exc:
                raise ProviderMissingError(
                    f"suite {name!r} needs {oqs_name} from the liboqs provider, which is not "
                    f"available: {exc}. Install liboqs itself and `pip install 'qsgw[oqs]'`"
                ) from exc
            kems.append(kem)
            if kem.static_only:
                static.add(kem.name)
        return Suite(
            name=name,
            kems=(*kems, *extra, builtin.X25519),
            static_kems=frozenset(static),
        )

    return make


_SUITES: dict[str, Callable[[], Suite]] = {
    "default": _builtin_suite("default", builtin.ML_KEM_768, builtin.X25519),
    "mlkem1024": _builtin_suite("mlkem1024", builtin.ML_KEM_1024, builtin.X25519),
    "frodo976aes": _oqs_suite("frodo976aes", "FrodoKEM-976-AES"),
    "frodo976shake": _oqs_suite("frodo976shake", "FrodoKEM-976-SHAKE"),
    "frodo1344aes": _oqs_suite("frodo1344aes", "FrodoKEM-1344-AES"),
    "frodo1344shake": _oqs_suite("frodo1344shake", "FrodoKEM-1344-SHAKE"),
    "hqc3": _oqs_suite("hqc3", "HQC-3"),
    # A static KEM gives no forward secrecy, so an ephemeral ML-KEM stays in.
    "mceliece460896f": _oqs_suite(
        "mceliece460896f", "Classic-McEliece-460896f", extra=(builtin.ML_KEM_768,)
    ),
    "mceliece6688128f": _oqs_suite(
        "mceliece6688128f", "Classic-McEliece-6688128f", extra=(builtin.ML_KEM_768,)
    ),
}

DEFAULT_SUITE = "default"
SUITE_NAMES: tuple[str, ...] = tuple(_SUITES)
BUILTIN_SUITE_NAMES: tuple[str, ...] = ("default", "mlkem1024")


def lookup_suite(name: str) -> Suite:
    """The suite called ``name``; raises UnknownSuiteError or ProviderMissingError."""
    make = _SUITES.get(name)
    if make is None:
        raise UnknownSuiteError(
            f"unknown suite {name!r}; allowed: {', '.join(SUITE_NAMES)}"
        )
    return make()
