"""``KmeClient``: the SAE side of ETSI GS QKD 014 over HTTPS with mutual TLS.

One pooled transport per KME endpoint (``kms_client._transport``: connections are reused);
every call is bounded by ``timeout``; 503, other 5xx, timeouts and connection
errors are retried with exponential backoff and full jitter, then the next
endpoint is tried; 400/401 are never retried. What an error answer means is
read through the KME's dialect (``kms_client._dialects``; strict ETSI by default).
The KME's identity (CA chain, KME ID as the subject CN, and any pin in the
endpoint's ``TlsOptions``) is checked inside the TLS handshake, before any request
is sent; a TLS failure a retry cannot fix is not retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import quote

from kms_client._dialects import Call, Dialect, get_dialect
from kms_client._errors import (
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
    JsonObject,
    KeyContainer,
    KeyIDs,
    KeyRequest,
    Status,
    dump_json,
    is_uuid,
)
from kms_client._tls import TlsOptions, client_ssl_context, handshake_counts
from kms_client._tls_triage import SERVER_CERT_KINDS, Where, describe, triage
from kms_client._transport import (
    BodyTooLarge,
    Reply,
    Transport,
    TransportFailure,
    TransportTimeout,
)

log = logging.getLogger("kms_client")

Method = Literal["GET", "POST"]

_MAX_MESSAGE = 200


@dataclass(frozen=True, slots=True)
class KmeEndpoint:
    """One address of a KME: its base URL, the KME ID its certificate must carry, its CA,
    how its certificate is verified, and (when not the client's) its dialect."""

    url: str
    kme_id: str
    ca_file: Path
    tls: TlsOptions = field(default_factory=TlsOptions)
    dialect: Dialect | None = None


@dataclass(frozen=True, slots=True)
class SaeCredentials:
    """This SAE's identity towards its KME (paths only; the key stays on disk)."""

    sae_id: str
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff for transient failures, and polling for dec_keys keys not there yet.

    ``attempts`` is per endpoint; the delay before retry n (0-based) is drawn
    uniformly from ``[(1 - jitter) * d, d]`` with ``d = min(max_delay_s,
    base_delay_s * multiplier**n)`` (full jitter at 1.0).
    """

    attempts: int = 3
    base_delay_s: float = 0.1
    max_delay_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 1.0
    retry_after_cap_s: float = 5.0
    poll_interval_s: float = 0.1
    max_poll_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise KmeInvalidArgument("RetryPolicy.attempts must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise KmeInvalidArgument("RetryPolicy.jitter must be within [0, 1]")
        if min(self.base_delay_s, self.max_delay_s, self.poll_interval_s) < 0:
            raise KmeInvalidArgument("RetryPolicy delays must not be negative")

    def delay(self, retry: int, rng: random.Random) -> float:
        d = min(self.max_delay_s, self.base_delay_s * self.multiplier**retry)
        return d * (1.0 - self.jitter * rng.random())


class _Retryable(Exception):
    """Internal: this attempt failed in a way another attempt may not."""

    def __init__(self, summary: str, retry_after: float | None = None) -> None:
        super().__init__(summary)
        self.summary = summary
        self.retry_after = retry_after


class KmeClient:
    """Async ETSI GS QKD 014 client for one SAE, over one or more KME endpoints."""

    def __init__(
        self,
        endpoints: Sequence[KmeEndpoint],
        credentials: SaeCredentials,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        *,
        rng: random.Random | None = None,
        key_ids_name_master: bool = False,
        dialect: Dialect | str = "etsi",
    ) -> None:
        """``key_ids_name_master``: put ``master_SAE_ID`` in every key_IDs entry of a
        dec_keys request, for KMEs that need it (not in ETSI GS QKD 014; also set by
        a dialect that needs it). ``dialect``: how error answers are read, for every
        endpoint that names none of its own."""
        if not endpoints:
            raise KmeInvalidArgument("at least one KME endpoint is needed")
        if timeout <= 0:
            raise KmeInvalidArgument("timeout must be positive")
        self._endpoints = tuple(endpoints)
        self._dialect = get_dialect(dialect) if isinstance(dialect, str) else dialect
        self._key_ids_name_master = key_ids_name_master or self._dialect.key_ids_name_master
        self._timeout = timeout
        self._credentials = credentials
        self._retry = retry or RetryPolicy()
        self._rng = rng or random.SystemRandom()
        self._preferred = 0  # sticky: the endpoint that answered last goes first
        self._closed = False
        self._transports: list[Transport] = []
        self._where: list[Where] = []
        for ep in self._endpoints:
            if not ep.url.startswith("https://"):
                raise KmeInvalidArgument(f"KME endpoint {ep.url!r} is not an https:// URL")
            ctx = client_ssl_context(ep.ca_file, credentials.cert_file, credentials.key_file,
                                     kme_id=ep.kme_id, options=ep.tls)
            self._where.append(Where(ep.url, ep.kme_id, ep.ca_file, credentials.cert_file,
                                     credentials.key_file, ctx, timeout))
            self._transports.append(Transport(ep.url, ctx, timeout))

    @property
    def sae_id(self) -> str:
        return self._credentials.sae_id

    @property
    def endpoints(self) -> tuple[KmeEndpoint, ...]:
        return self._endpoints

    @property
    def tls_handshakes(self) -> dict[str, int]:
        """TLS handshakes with the KMEs so far: full, and resumed from a session ticket."""
        counts = [handshake_counts(w.context) for w in self._where]
        return {"full": sum(c[0] for c in counts), "resumed": sum(c[1] for c in counts)}

    async def __aenter__(self) -> KmeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def drop_connections(self) -> None:
        """Close the kept-alive connections; the next call opens new ones. For an SAE
        that calls minutes apart: the KME need not hold its idle connection meanwhile,
        and the client keeps its TLS context (loading one costs about 2 ms)."""
        for transport in self._transports:
            await transport.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for transport in self._transports:
            await transport.aclose()

    # ------------------------------------------------------------------ API

    async def status(self, slave_sae_id: str) -> Status:
        """``GET /api/v1/keys/{slave_SAE_ID}/status``."""
        _check_sae_id(slave_sae_id, "slave_sae_id")
        body = await self._call("GET", _path(slave_sae_id, "status"), call="status")
        return Status.parse(body)

    async def enc_keys(
        self,
        slave_sae_id: str,
        number: int = 1,
        size: int | None = None,
        additional_slave_sae_ids: Sequence[str] = (),
        extension_mandatory: Sequence[JsonObject] | None = None,
        extension_optional: Sequence[JsonObject] | None = None,
        method: Method = "POST",
    ) -> KeyContainer:
        """Ask for ``number`` new keys shared with ``slave_sae_id`` (and any additional slaves).

        The answer must hold exactly ``number`` distinct keys of ``size`` bits
        (when a size is given), else ``KmeProtocolError``.
        """
        _check_sae_id(slave_sae_id, "slave_sae_id")
        _check_positive(number, "number")
        if size is not None:
            _check_positive(size, "size")
        extra = tuple(additional_slave_sae_ids)
        for n, sae in enumerate(extra):
            _check_sae_id(sae, f"additional_slave_sae_ids[{n}]")
        path = _path(slave_sae_id, "enc_keys")
        if method == "GET":
            if extra or extension_mandatory is not None or extension_optional is not None:
                raise KmeInvalidArgument(
                    "the GET form of enc_keys carries only number and size; use POST"
                )
            params = {"number": str(number)}
            if size is not None:
                params["size"] = str(size)
            body = await self._call("GET", path, params=params, call="enc_keys")
        elif method == "POST":
            request = KeyRequest(
                number=number,
                size=size,
                additional_slave_sae_ids=extra,
                extension_mandatory=_opt_tuple(extension_mandatory),
                extension_optional=_opt_tuple(extension_optional),
            )
            body = await self._call(
                "POST", path, content=dump_json(request.to_json()), call="enc_keys"
            )
        else:
            raise KmeInvalidArgument(f"method must be GET or POST, not {method!r}")
        return KeyContainer.parse(body, expected_number=number, expected_size_bits=size)

    async def dec_keys(
        self,
        master_sae_id: str,
        key_ids: Sequence[str],
        method: Method = "POST",
        deadline_s: float | None = None,
    ) -> KeyContainer:
        """Fetch the keys ``key_ids`` that ``master_sae_id`` obtained through enc_keys.

        A key_ID that has not reached this KME yet (400 "not found", or what the
        KME's dialect reads as not found / not yet) is asked for again until
        ``deadline_s`` seconds have passed, then ``KmeKeyNotFound``; with no
        deadline it is asked for once.
        The keys come back in the order of ``key_ids``.
        """
        _check_sae_id(master_sae_id, "master_sae_id")
        ids = tuple(key_ids)
        if not ids:
            raise KmeInvalidArgument("key_ids is empty")
        folded: set[str] = set()
        for n, kid in enumerate(ids):
            if not isinstance(kid, str) or not is_uuid(kid):
                raise KmeInvalidArgument(f"key_ids[{n}] is not a UUID")
            if kid.lower() in folded:
                raise KmeInvalidArgument(f"key_ids[{n}] is a duplicate")
            folded.add(kid.lower())
        if deadline_s is not None and deadline_s < 0:
            raise KmeInvalidArgument("deadline_s must not be negative")
        path = _path(master_sae_id, "dec_keys")
        if method == "GET":
            if len(ids) != 1:
                raise KmeInvalidArgument("the GET form of dec_keys takes exactly one key_ID")
            params: dict[str, str] | None = {"key_ID": ids[0]}
            content: bytes | None = None
        elif method == "POST":
            params = None
            named = master_sae_id if self._key_ids_name_master else None
            content = dump_json(KeyIDs.of(ids, master_sae_id=named).to_json())
        else:
            raise KmeInvalidArgument(f"method must be GET or POST, not {method!r}")

        loop = asyncio.get_running_loop()
        end = None if deadline_s is None else loop.time() + deadline_s
        poll = self._retry.poll_interval_s
        while True:
            try:
                body = await self._call(
                    method, path, params=params, content=content, call="dec_keys"
                )
                break
            except KmeBadRequest as exc:
                if not exc.not_found:
                    raise
                remaining = None if end is None else end - loop.time()
                if remaining is None or remaining <= 0:
                    raise KmeKeyNotFound(ids, exc.kme_message[:_MAX_MESSAGE]) from None
                log.debug("dec_keys: key_ID not on KME yet, asking again in %.3fs", poll)
                await asyncio.sleep(min(poll, remaining))
                poll = min(self._retry.max_poll_interval_s, poll * 2)
        container = KeyContainer.parse(body, expected_number=len(ids))
        by_id = {k.key_id.lower(): k for k in container.keys}
        if set(by_id) != folded:
            raise KmeProtocolError("keys", "the key_IDs returned are not the key_IDs asked for")
        return KeyContainer(
            keys=tuple(by_id[k.lower()] for k in ids), extension=container.extension
        )

    async def get_raw(self, path: str) -> bytes:
        """GET a non-ETSI path (e.g. the simulator's ``/api/v1/noop``) over the same
        connections, retries and identity check; the body of a 200 answer."""
        if not path.startswith("/"):
            raise KmeInvalidArgument("path must start with '/'")
        return await self._call("GET", path)

    # ------------------------------------------------------------ transport

    async def _call(
        self,
        method: Method,
        path: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        call: Call = "status",
    ) -> bytes:
        """One API call with retries and failover; the body of a 200 answer, else a typed error."""
        if self._closed:
            raise KmsError("KmeClient is closed")
        failures: list[str] = []
        tls_error: KmeTlsError | None = None
        n = len(self._endpoints)
        for offset in range(n):
            index = (self._preferred + offset) % n
            endpoint = self._endpoints[index]
            for attempt in range(self._retry.attempts):
                try:
                    body = await self._attempt(index, method, path, params, content, call)
                except _Retryable as exc:
                    failures.append(f"{endpoint.url}: {exc.summary}")
                    if attempt + 1 < self._retry.attempts:
                        delay = self._retry.delay(attempt, self._rng)
                        if exc.retry_after is not None:
                            delay = max(delay, min(exc.retry_after, self._retry.retry_after_cap_s))
                        log.warning(
                            "KME %s %s %s failed (%s), retry %d in %.3fs",
                            endpoint.url, method, path, exc.summary, attempt + 1, delay,
                        )
                        await asyncio.sleep(delay)
                    continue
                except KmeTlsError as exc:
                    log.error("KME %s: %s", endpoint.url, exc)
                    failures.append(f"{endpoint.url}: {exc}")
                    tls_error = tls_error or exc
                    break  # no retry can fix this endpoint's TLS; try the next one
                else:
                    if index != self._preferred:
                        log.warning("KME failover: now using %s", endpoint.url)
                        self._preferred = index
                    return body
            if offset + 1 < n:
                log.warning("KME %s unusable, failing over", endpoint.url)
        if tls_error is not None:
            raise tls_error
        raise KmeUnavailable(
            f"no KME could serve {method} {path}: " + "; ".join(failures[-2 * n :])
        )

    async def _attempt(
        self,
        index: int,
        method: Method,
        path: str,
        params: dict[str, str] | None,
        content: bytes | None,
        call: Call,
    ) -> bytes:
        endpoint = self._endpoints[index]
        try:
            response = await self._transports[index].request(method, path, params=params,
                                                             content=content)
        except TransportTimeout:
            raise _Retryable("timeout") from None
        except BodyTooLarge:
            raise KmeProtocolError("", f"KME {endpoint.kme_id} sent an answer over the size "
                                   "limit") from None
        except TransportFailure as exc:
            failure = await triage(exc, self._where[index])
            if failure is None:
                raise _Retryable(f"{type(exc.__cause__ or exc).__name__}: {describe(exc)}"
                                 ) from None
            if failure.kind == "client-cert":
                raise KmeUnauthorized(failure.message) from None
            if failure.kind in SERVER_CERT_KINDS:
                raise KmeIdentityMismatch(failure.message, failure.kind) from None
            raise KmeTlsError(failure.message, failure.kind) from None
        code = response.status
        if code == 200:
            return response.body
        message = _error_message(response)
        dialect = endpoint.dialect or self._dialect
        outcome = dialect.outcome(code, message, call)
        if outcome == "unauthorized":
            raise KmeUnauthorized(
                f"KME {endpoint.kme_id} refused SAE {self._credentials.sae_id} (HTTP {code})"
                + (f": {message}" if message else "")
            )
        if outcome == "bad-request":
            raise KmeBadRequest(message or "(no message)", code)
        if outcome in ("not-found", "not-yet"):
            raise KmeBadRequest(message or "(no message)", code, not_found=True)
        if outcome == "unavailable":
            raise _Retryable(
                f"HTTP {code}" + (f": {message}" if message else ""),
                _retry_after(response),
            )
        raise KmeProtocolError("", f"unexpected HTTP status {code} from KME {endpoint.kme_id}")


def _path(sae_id: str, leaf: str) -> str:
    return f"/api/v1/keys/{quote(sae_id, safe='')}/{leaf}"


def _check_sae_id(value: object, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise KmeInvalidArgument(f"{name} must be a non-empty string")


def _check_positive(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise KmeInvalidArgument(f"{name} must be a positive integer")


def _opt_tuple(value: Sequence[JsonObject] | None) -> tuple[JsonObject, ...] | None:
    if value is None:
        return None
    out = tuple(value)
    for n, item in enumerate(out):
        if not isinstance(item, dict):
            raise KmeInvalidArgument(f"extension[{n}] must be a JSON object")
    return out


def _error_message(response: Reply) -> str:
    """The ``message`` of an error body, or "" (401 often has none; deviant KMEs send HTML)."""
    if not response.body:
        return ""
    try:
        return ErrorBody.parse(response.body).message[:_MAX_MESSAGE]
    except KmsError:
        return ""


def _retry_after(response: Reply) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

