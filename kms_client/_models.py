"""ETSI GS QKD 014 V1.1.1 data formats: strict parsing and serialisation (pure, no I/O).

Every parser takes the decoded JSON value (or raw bytes via ``parse``) and
either returns a frozen model or raises ``KmeProtocolError`` naming the JSON
path and the problem. Unknown members are ignored (vendors add their own);
``null`` for an optional member counts as absent. Error messages never carry
a value that could be key material.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kms_client._errors import KmeProtocolError

JsonObject = dict[str, Any]

_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# Loose bound so that a hostile KME cannot make us allocate without limit per field.
_MAX_ID_LEN = 1024


def _reject_duplicate_members(pairs: list[tuple[str, Any]]) -> JsonObject:
    obj: JsonObject = {}
    for name, value in pairs:
        if name in obj:
            # The name is a JSON member name chosen by the peer, never a key value.
            raise KmeProtocolError("", f"duplicate JSON member {name[:64]!r}")
        obj[name] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise KmeProtocolError("", f"non-standard JSON constant {name}")


def parse_json(body: bytes | str) -> Any:
    """Decode a JSON body strictly (UTF-8, no duplicate members, no NaN/Infinity)."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
        return json.loads(
            text,
            object_pairs_hook=_reject_duplicate_members,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError as exc:
        raise KmeProtocolError("", f"body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: exc.doc would be the body itself.
        raise KmeProtocolError(
            "", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise KmeProtocolError("", "JSON nested too deeply") from None


def dump_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ----------------------------------------------------------------- field helpers


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _object(value: object, path: str) -> JsonObject:
    if not isinstance(value, dict):
        raise KmeProtocolError(path, f"expected an object, got {_type_name(value)}")
    return value


def _member(obj: JsonObject, name: str, path: str) -> Any:
    if name not in obj or obj[name] is None:
        raise KmeProtocolError(_join(path, name), "missing")
    return obj[name]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _str(value: object, path: str, *, nonempty: bool = True) -> str:
    if not isinstance(value, str):
        raise KmeProtocolError(path, f"expected a string, got {_type_name(value)}")
    if nonempty and not value:
        raise KmeProtocolError(path, "empty string")
    if len(value) > _MAX_ID_LEN:
        raise KmeProtocolError(path, f"longer than {_MAX_ID_LEN} characters")
    return value


def _int(value: object, path: str, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise KmeProtocolError(path, f"expected an integer, got {_type_name(value)}")
    if value < minimum:
        raise KmeProtocolError(path, f"must be at least {minimum}, got {value}")
    return value


def _opt_object(obj: JsonObject, name: str, path: str) -> JsonObject | None:
    value = obj.get(name)
    if value is None:
        return None
    return _object(value, _join(path, name))


def _opt_object_list(obj: JsonObject, name: str, path: str) -> tuple[JsonObject, ...] | None:
    value = obj.get(name)
    if value is None:
        return None
    p = _join(path, name)
    if not isinstance(value, list):
        raise KmeProtocolError(p, f"expected an array, got {_type_name(value)}")
    return tuple(_object(item, f"{p}[{i}]") for i, item in enumerate(value))


def _key_id(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise KmeProtocolError(path, f"expected a UUID string, got {_type_name(value)}")
    if not _UUID_RE.fullmatch(value):
        raise KmeProtocolError(path, "not a UUID")
    return value


def _put_opt(out: JsonObject, name: str, value: object) -> None:
    if value is not None:
        out[name] = value


def key_bytes_for_bits(size_bits: int) -> int:
    """Bytes that carry a key of ``size_bits`` bits (sizes need not be multiples of 8)."""
    return (size_bits + 7) // 8


# ---------------------------------------------------------------------- models


@dataclass(frozen=True, slots=True)
class Status:
    """``GET /api/v1/keys/{slave_SAE_ID}/status``: the link between two SAEs."""

    source_kme_id: str
    target_kme_id: str
    master_sae_id: str
    slave_sae_id: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_sae_id_count: int
    status_extension: JsonObject | None = None

    @classmethod
    def from_json(cls, value: object) -> Status:
        obj = _object(value, "")

        def s(name: str) -> str:
            return _str(_member(obj, name, ""), name)

        def i(name: str) -> int:
            return _int(_member(obj, name, ""), name)

        return cls(
            source_kme_id=s("source_KME_ID"),
            target_kme_id=s("target_KME_ID"),
            master_sae_id=s("master_SAE_ID"),
            slave_sae_id=s("slave_SAE_ID"),
            key_size=i("key_size"),
            stored_key_count=i("stored_key_count"),
            max_key_count=i("max_key_count"),
            max_key_per_request=i("max_key_per_request"),
            max_key_size=i("max_key_size"),
            min_key_size=i("min_key_size"),
            max_sae_id_count=i("max_SAE_ID_count"),
            status_extension=_opt_object(obj, "status_extension", ""),
        )

    @classmethod
    def parse(cls, body: bytes | str) -> Status:
        return cls.from_json(parse_json(body))

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "source_KME_ID": self.source_kme_id,
            "target_KME_ID": self.target_kme_id,
            "master_SAE_ID": self.master_sae_id,
            "slave_SAE_ID": self.slave_sae_id,
            "key_size": self.key_size,
            "stored_key_count": self.stored_key_count,
            "max_key_count": self.max_key_count,
            "max_key_per_request": self.max_key_per_request,
            "max_key_size": self.max_key_size,
            "min_key_size": self.min_key_size,
            "max_SAE_ID_count": self.max_sae_id_count,
        }
        _put_opt(out, "status_extension", self.status_extension)
        return out


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """The enc_keys request body (every member optional)."""

    number: int | None = None
    size: int | None = None
    additional_slave_sae_ids: tuple[str, ...] = ()
    extension_mandatory: tuple[JsonObject, ...] | None = None
    extension_optional: tuple[JsonObject, ...] | None = None

    @classmethod
    def from_json(cls, value: object) -> KeyRequest:
        obj = _object(value, "")
        number = obj.get("number")
        size = obj.get("size")
        extra = obj.get("additional_slave_SAE_IDs")
        extra_ids: tuple[str, ...] = ()
        if extra is not None:
            if not isinstance(extra, list):
                raise KmeProtocolError(
                    "additional_slave_SAE_IDs", f"expected an array, got {_type_name(extra)}"
                )
            extra_ids = tuple(
                _str(v, f"additional_slave_SAE_IDs[{n}]") for n, v in enumerate(extra)
            )
        return cls(
            number=None if number is None else _int(number, "number", minimum=1),
            size=None if size is None else _int(size, "size", minimum=1),
            additional_slave_sae_ids=extra_ids,
            extension_mandatory=_opt_object_list(obj, "extension_mandatory", ""),
            extension_optional=_opt_object_list(obj, "extension_optional", ""),
        )

    @classmethod
    def parse(cls, body: bytes | str) -> KeyRequest:
        """Parse a request body; an empty body is the all-defaults request."""
        if not body.strip():
            return cls()
        return cls.from_json(parse_json(body))

    def to_json(self) -> JsonObject:
        out: JsonObject = {}
        _put_opt(out, "number", self.number)
        _put_opt(out, "size", self.size)
        if self.additional_slave_sae_ids:
            out["additional_slave_SAE_IDs"] = list(self.additional_slave_sae_ids)
        if self.extension_mandatory is not None:
            out["extension_mandatory"] = list(self.extension_mandatory)
        if self.extension_optional is not None:
            out["extension_optional"] = list(self.extension_optional)
        return out


@dataclass(frozen=True, slots=True)
class Key:
    """One QKD key. ``key`` never appears in repr (nor, thus, in str or logs)."""

    key_id: str
    key: bytes = field(repr=False)
    key_id_extension: JsonObject | None = None
    key_extension: JsonObject | None = None

    @classmethod
    def from_json(
        cls, value: object, path: str = "", *, expected_bytes: int | None = None
    ) -> Key:
        obj = _object(value, path)
        key_id = _key_id(_member(obj, "key_ID", path), _join(path, "key_ID"))
        kpath = _join(path, "key")
        encoded = _member(obj, "key", path)
        if not isinstance(encoded, str):
            raise KmeProtocolError(kpath, f"expected a base64 string, got {_type_name(encoded)}")
        key = _b64decode(encoded, kpath)
        if not key:
            raise KmeProtocolError(kpath, "empty key")
        if expected_bytes is not None and len(key) != expected_bytes:
            raise KmeProtocolError(
                kpath, f"key is {len(key)} bytes, {expected_bytes} bytes were asked for"
            )
        return cls(
            key_id=key_id,
            key=key,
            key_id_extension=_opt_object(obj, "key_ID_extension", path),
            key_extension=_opt_object(obj, "key_extension", path),
        )

    def to_json(self) -> JsonObject:
        out: JsonObject = {"key_ID": self.key_id}
        _put_opt(out, "key_ID_extension", self.key_id_extension)
        out["key"] = base64.b64encode(self.key).decode("ascii")
        _put_opt(out, "key_extension", self.key_extension)
        return out


def _b64decode(encoded: str, path: str) -> bytes:
    try:
        raw = encoded.encode("ascii")
        key = base64.b64decode(raw, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise KmeProtocolError(path, "not valid base64 (RFC 4648)") from None
    # Non-canonical encodings (stray bits in the last character) are rejected so that
    # one key has exactly one textual form.
    if base64.b64encode(key) != raw:
        raise KmeProtocolError(path, "not canonical base64 (RFC 4648)")
    return key


@dataclass(frozen=True, slots=True)
class KeyContainer:
    """The answer of enc_keys and dec_keys."""

    keys: tuple[Key, ...]
    extension: JsonObject | None = None

    @classmethod
    def from_json(
        cls,
        value: object,
        *,
        expected_number: int | None = None,
        expected_size_bits: int | None = None,
    ) -> KeyContainer:
        obj = _object(value, "")
        raw_keys = _member(obj, "keys", "")
        if not isinstance(raw_keys, list):
            raise KmeProtocolError("keys", f"expected an array, got {_type_name(raw_keys)}")
        if expected_number is not None and len(raw_keys) != expected_number:
            raise KmeProtocolError(
                "keys", f"{len(raw_keys)} keys returned, {expected_number} were asked for"
            )
        if not raw_keys:
            raise KmeProtocolError("keys", "no keys returned")
        nbytes = None if expected_size_bits is None else key_bytes_for_bits(expected_size_bits)
        keys: list[Key] = []
        seen: set[str] = set()
        for n, item in enumerate(raw_keys):
            key = Key.from_json(item, f"keys[{n}]", expected_bytes=nbytes)
            folded = key.key_id.lower()
            if folded in seen:
                raise KmeProtocolError(f"keys[{n}].key_ID", "duplicate key_ID in one answer")
            seen.add(folded)
            keys.append(key)
        return cls(keys=tuple(keys), extension=_opt_object(obj, "key_container_extension", ""))

    @classmethod
    def parse(
        cls,
        body: bytes | str,
        *,
        expected_number: int | None = None,
        expected_size_bits: int | None = None,
    ) -> KeyContainer:
        return cls.from_json(
            parse_json(body),
            expected_number=expected_number,
            expected_size_bits=expected_size_bits,
        )

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self.keys)

    def to_json(self) -> JsonObject:
        out: JsonObject = {"keys": [k.to_json() for k in self.keys]}
        _put_opt(out, "key_container_extension", self.extension)
        return out


@dataclass(frozen=True, slots=True)
class KeyIdRef:
    """One entry of a dec_keys request."""

    key_id: str
    key_id_extension: JsonObject | None = None
    #: Not in ETSI GS QKD 014: some vendors' KMEs want the master SAE in each entry.
    master_sae_id: str | None = None

    def to_json(self) -> JsonObject:
        out: JsonObject = {"key_ID": self.key_id}
        _put_opt(out, "key_ID_extension", self.key_id_extension)
        _put_opt(out, "master_SAE_ID", self.master_sae_id)
        return out


@dataclass(frozen=True, slots=True)
class KeyIDs:
    """The dec_keys request body."""

    key_ids: tuple[KeyIdRef, ...]
    extension: JsonObject | None = None

    @classmethod
    def of(cls, key_ids: Sequence[str], master_sae_id: str | None = None) -> KeyIDs:
        """``master_sae_id``: also name the master in each entry (a vendor deviation)."""
        return cls(key_ids=tuple(KeyIdRef(k, master_sae_id=master_sae_id) for k in key_ids))

    @classmethod
    def from_json(cls, value: object) -> KeyIDs:
        obj = _object(value, "")
        raw = _member(obj, "key_IDs", "")
        if not isinstance(raw, list):
            raise KmeProtocolError("key_IDs", f"expected an array, got {_type_name(raw)}")
        if not raw:
            raise KmeProtocolError("key_IDs", "empty")
        refs: list[KeyIdRef] = []
        seen: set[str] = set()
        for n, item in enumerate(raw):
            path = f"key_IDs[{n}]"
            entry = _object(item, path)
            key_id = _key_id(_member(entry, "key_ID", path), _join(path, "key_ID"))
            if key_id.lower() in seen:
                raise KmeProtocolError(_join(path, "key_ID"), "duplicate key_ID")
            seen.add(key_id.lower())
            refs.append(KeyIdRef(key_id, _opt_object(entry, "key_ID_extension", path)))
        return cls(key_ids=tuple(refs), extension=_opt_object(obj, "key_IDs_extension", ""))

    @classmethod
    def parse(cls, body: bytes | str) -> KeyIDs:
        return cls.from_json(parse_json(body))

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(r.key_id for r in self.key_ids)

    def to_json(self) -> JsonObject:
        out: JsonObject = {"key_IDs": [r.to_json() for r in self.key_ids]}
        _put_opt(out, "key_IDs_extension", self.extension)
        return out


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The error body of 400 and 503 answers."""

    message: str
    details: tuple[JsonObject, ...] | None = None

    @classmethod
    def from_json(cls, value: object) -> ErrorBody:
        obj = _object(value, "")
        message = _member(obj, "message", "")
        if not isinstance(message, str):
            raise KmeProtocolError("message", f"expected a string, got {_type_name(message)}")
        return cls(message=message, details=_opt_object_list(obj, "details", ""))

    @classmethod
    def parse(cls, body: bytes | str) -> ErrorBody:
        return cls.from_json(parse_json(body))

    def to_json(self) -> JsonObject:
        out: JsonObject = {"message": self.message}
        if self.details is not None:
            out["details"] = list(self.details)
        return out


def is_uuid(value: str) -> bool:
    return _UUID_RE.fullmatch(value) is not None
