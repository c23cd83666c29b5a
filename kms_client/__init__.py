"""ETSI GS QKD 014 key delivery: typed models, an async SAE client, key batching.

The KME simulator lives in ``kms_client.sim`` and is imported separately.
"""

from kms_client._buffer import KeyBuffer
from kms_client._client import KmeClient, KmeEndpoint, Method, RetryPolicy, SaeCredentials
from kms_client._dialects import DIALECTS, Dialect, Rule, get_dialect
from kms_client._errors import (
    KeyBufferClosed,
    KmeBadRequest,
    KmeIdentityMismatch,
    KmeInvalidArgument,
    KmeKeyNotFound,
    KmeProtocolError,
    KmeTlsError,
    KmeUnauthorized,
    KmeUnavailable,
    KmsError,
)
from kms_client._models import (
    ErrorBody,
    Key,
    KeyContainer,
    KeyIdRef,
    KeyIDs,
    KeyRequest,
    Status,
    key_bytes_for_bits,
)
from kms_client._tls import TlsOptions

__all__ = [
    "DIALECTS",
    "Dialect",
    "ErrorBody",
    "Key",
    "KeyBuffer",
    "KeyBufferClosed",
    "KeyContainer",
    "KeyIDs",
    "KeyIdRef",
    "KeyRequest",
    "KmeBadRequest",
    "KmeClient",
    "KmeEndpoint",
    "KmeIdentityMismatch",
    "KmeInvalidArgument",
    "KmeKeyNotFound",
    "KmeProtocolError",
    "KmeTlsError",
    "KmeUnauthorized",
    "KmeUnavailable",
    "KmsError",
    "Method",
    "RetryPolicy",
    "Rule",
    "SaeCredentials",
    "Status",
    "TlsOptions",
    "get_dialect",
    "key_bytes_for_bits",
]
