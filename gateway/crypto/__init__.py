"""KEM and signature providers, algorithm suites and the key combiner (pure, no I/O)."""

from gateway.crypto.combiner import CombinerError, EpochKeys, combine
from gateway.crypto.memory import wipe
from gateway.crypto.providers import Kem, KemKeyPair, ProviderError, SignatureScheme
from gateway.crypto.suites import (
    DEFAULT_SUITE,
    SUITE_NAMES,
    ProviderMissingError,
    Suite,
    SuiteError,
    UnknownSuiteError,
    lookup_suite,
)

__all__ = [
    "DEFAULT_SUITE",
    "SUITE_NAMES",
    "CombinerError",
    "EpochKeys",
    "Kem",
    "KemKeyPair",
    "ProviderError",
    "ProviderMissingError",
    "SignatureScheme",
    "Suite",
    "SuiteError",
    "UnknownSuiteError",
    "combine",
    "lookup_suite",
    "wipe",
]
