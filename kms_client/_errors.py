"""The typed error hierarchy of the key supply.

Every error is a ``KmsError``. Messages name what was wrong (a field, a status
code, an endpoint), never key material: callers may log them as they are.
"""

from __future__ import annotations


class KmsError(Exception):
    """Base of every error raised by kms_client."""


class KmeInvalidArgument(KmsError, ValueError):
    """The caller asked for something the API cannot express (checked before any I/O)."""


class KmeProtocolError(KmsError):
    """A KME answer (or a request body, on the server side) broke ETSI GS QKD 014.

    ``field`` is the JSON path of the offending member (``"keys[2].key"``),
    or ``""`` for the body as a whole.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        where = field or "body"
        super().__init__(f"{where}: {problem}")


class KmeBadRequest(KmsError):
    """The KME refused the request as invalid (HTTP 400/422, or 404 for an unknown path).

    ``not_found``: the KME's dialect reads this answer as "key_ID not (yet) there", which
    dec_keys polls for until its deadline.
    """

    def __init__(self, message: str, status_code: int = 400, *, not_found: bool = False) -> None:
        self.status_code = status_code
        self.kme_message = message
        self.not_found = not_found
        super().__init__(f"KME refused the request (HTTP {status_code}): {message}")


class KmeUnauthorized(KmsError):
    """The KME refused this SAE (HTTP 401, or the TLS handshake rejected our certificate)."""


class KmeKeyNotFound(KmsError):
    """A dec_keys key_ID was not (or not yet, by the deadline) on the KME."""

    def __init__(self, key_ids: tuple[str, ...], detail: str) -> None:
        self.key_ids = key_ids
        super().__init__(f"key_ID(s) {', '.join(key_ids)} not found on KME: {detail}")


class KmeUnavailable(KmsError):
    """No configured KME endpoint could serve the call, after retries and failover."""


class KmeTlsError(KmsError):
    """TLS with the KME failed in a way no retry can fix (cipher, version, certificate).

    ``kind`` names the failure (see ``kms_client._tls_triage.Kind``); the message says
    what the operator can do about it.
    """

    def __init__(self, message: str, kind: str = "") -> None:
        self.kind = kind
        super().__init__(message)


class KmeIdentityMismatch(KmeTlsError):
    """The KME's TLS certificate did not prove the expected KME ID (or pin)."""


class KeyBufferClosed(KmsError):
    """A KeyBuffer was used after ``aclose()``."""
