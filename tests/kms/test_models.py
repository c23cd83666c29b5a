"""ETSI GS QKD 014 models: round trips, strict parsing, and no key in any text."""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kms_client import (
    ErrorBody,
    Key,
    KeyContainer,
    KeyIDs,
    KeyRequest,
    KmeProtocolError,
    Status,
    key_bytes_for_bits,
)

SECRET = bytes(range(32))
SECRET_B64 = base64.b64encode(SECRET).decode()


def status_json(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source_KME_ID": "KME_A",
        "target_KME_ID": "KME_B",
        "master_SAE_ID": "SAE_A",
        "slave_SAE_ID": "SAE_B",
        "key_size": 256,
        "stored_key_count": 25000,
        "max_key_count": 100000,
        "max_key_per_request": 128,
        "max_key_size": 1024,
        "min_key_size": 64,
        "max_SAE_ID_count": 0,
    }
    body.update(over)
    return body


def container_json(n: int = 2, nbytes: int = 32) -> dict[str, Any]:
    return {
        "keys": [
            {"key_ID": str(uuid.uuid4()), "key": base64.b64encode(bytes([i]) * nbytes).decode()}
            for i in range(n)
        ]
    }


# ------------------------------------------------------------------ status


def test_status_parses_the_spec_example() -> None:
    st_ = Status.parse(json.dumps(status_json(status_extension={"x_vendor": 1})))
    assert st_.source_kme_id == "KME_A"
    assert st_.max_key_per_request == 128
    assert st_.status_extension == {"x_vendor": 1}
    assert Status.from_json(st_.to_json()) == st_


@pytest.mark.parametrize(
    ("over", "field", "problem"),
    [
        ({"key_size": "256"}, "key_size", "expected an integer"),
        ({"key_size": True}, "key_size", "expected an integer"),
        ({"key_size": 2.5}, "key_size", "expected an integer"),
        ({"stored_key_count": -1}, "stored_key_count", "at least 0"),
        ({"source_KME_ID": 7}, "source_KME_ID", "expected a string"),
        ({"slave_SAE_ID": ""}, "slave_SAE_ID", "empty"),
        ({"status_extension": []}, "status_extension", "expected an object"),
    ],
)
def test_status_wrong_types_name_the_field(over: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(KmeProtocolError) as info:
        Status.from_json(status_json(**over))
    assert info.value.field == field
    assert problem in info.value.problem


def test_status_missing_member_is_named() -> None:
    body = status_json()
    del body["max_SAE_ID_count"]
    with pytest.raises(KmeProtocolError, match="max_SAE_ID_count: missing"):
        Status.from_json(body)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b"null", b'{"a":1,"a":2}', b"\xff\xfe", b'{"key_size": NaN}'],
)
def test_malformed_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(KmeProtocolError):
        Status.parse(body)


# ------------------------------------------------------------------ keys


def test_key_repr_and_str_hide_the_key() -> None:
    key = Key(key_id=str(uuid.uuid4()), key=SECRET)
    container = KeyContainer(keys=(key,))
    for text in (repr(key), str(key), repr(container), str(container)):
        assert SECRET_B64 not in text
        assert repr(SECRET) not in text
        assert SECRET.hex() not in text
    assert key.key_id in repr(key)


def test_container_round_trip_with_extensions() -> None:
    body = container_json(3)
    body["keys"][0]["key_ID_extension"] = {"x": 1}
    body["keys"][1]["key_extension"] = {"y": [1, 2]}
    body["key_container_extension"] = {"z": "w"}
    c = KeyContainer.parse(json.dumps(body), expected_number=3, expected_size_bits=256)
    assert len(c.keys) == 3
    assert c.keys[0].key_id_extension == {"x": 1}
    assert c.extension == {"z": "w"}
    assert c.to_json() == body


def test_container_checks_count_and_size() -> None:
    body = container_json(3)
    with pytest.raises(KmeProtocolError, match="3 keys returned, 2 were asked for"):
        KeyContainer.from_json(body, expected_number=2)
    with pytest.raises(KmeProtocolError, match=r"keys\[0\]\.key: key is 32 bytes, 16 bytes"):
        KeyContainer.from_json(body, expected_size_bits=128)
    with pytest.raises(KmeProtocolError, match="no keys returned"):
        KeyContainer.from_json({"keys": []})


@pytest.mark.parametrize(("bits", "nbytes"), [(8, 1), (256, 32), (257, 33), (7, 1), (1000, 125)])
def test_sizes_not_multiple_of_8_round_up(bits: int, nbytes: int) -> None:
    assert key_bytes_for_bits(bits) == nbytes
    body = container_json(1, nbytes)
    assert len(KeyContainer.from_json(body, expected_size_bits=bits).keys[0].key) == nbytes


def test_duplicate_key_ids_rejected_case_insensitively() -> None:
    body = container_json(2)
    body["keys"][1]["key_ID"] = body["keys"][0]["key_ID"].upper()
    with pytest.raises(KmeProtocolError, match=r"keys\[1\]\.key_ID: duplicate"):
        KeyContainer.from_json(body)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda k: k.update(key_ID="not-a-uuid"), "keys[0].key_ID"),
        (lambda k: k.update(key_ID=12), "keys[0].key_ID"),
        (lambda k: k.update(key="!!!!"), "keys[0].key"),
        (lambda k: k.update(key=SECRET_B64[:-1]), "keys[0].key"),
        (lambda k: k.update(key=SECRET_B64.replace("=", "")), "keys[0].key"),
        (lambda k: k.update(key="QR=="), "keys[0].key"),  # non-canonical trailing bits
        (lambda k: k.update(key=""), "keys[0].key"),
        (lambda k: k.update(key=None), "keys[0].key"),
        (lambda k: k.pop("key"), "keys[0].key"),
        (lambda k: k.update(key_extension="x"), "keys[0].key_extension"),
    ],
)
def test_bad_key_entries_name_the_field_never_the_key(mutate: Any, field: str) -> None:
    entry = {"key_ID": str(uuid.uuid4()), "key": SECRET_B64}
    mutate(entry)
    with pytest.raises(KmeProtocolError) as info:
        KeyContainer.from_json({"keys": [entry]})
    assert info.value.field == field
    assert SECRET_B64[:8] not in str(info.value)


# ------------------------------------------------------------------ requests


def test_key_request_defaults_and_round_trip() -> None:
    assert KeyRequest.parse(b"") == KeyRequest()
    assert KeyRequest.parse(b"{}") == KeyRequest()
    req = KeyRequest(
        number=3,
        size=264,
        additional_slave_sae_ids=("SAE_C", "SAE_D"),
        extension_mandatory=({"abc_route_type": "direct"},),
        extension_optional=({"abc_transfer_method": "qkd"},),
    )
    assert KeyRequest.parse(json.dumps(req.to_json())) == req


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"number": 0}, "number"),
        ({"number": "1"}, "number"),
        ({"size": -8}, "size"),
        ({"additional_slave_SAE_IDs": "SAE_C"}, "additional_slave_SAE_IDs"),
        ({"additional_slave_SAE_IDs": [1]}, "additional_slave_SAE_IDs[0]"),
        ({"extension_mandatory": [1]}, "extension_mandatory[0]"),
        ({"extension_optional": {}}, "extension_optional"),
    ],
)
def test_key_request_bad_fields(body: dict[str, Any], field: str) -> None:
    with pytest.raises(KmeProtocolError) as info:
        KeyRequest.from_json(body)
    assert info.value.field == field


def test_key_ids_round_trip_and_strictness() -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    req = KeyIDs.of(ids)
    assert KeyIDs.parse(json.dumps(req.to_json())).ids == tuple(ids)
    with pytest.raises(KmeProtocolError, match=r"key_IDs\[1\]\.key_ID: duplicate"):
        KeyIDs.from_json({"key_IDs": [{"key_ID": ids[0]}, {"key_ID": ids[0]}]})
    with pytest.raises(KmeProtocolError, match="key_IDs: empty"):
        KeyIDs.from_json({"key_IDs": []})
    with pytest.raises(KmeProtocolError, match="not a UUID"):
        KeyIDs.from_json({"key_IDs": [{"key_ID": "x"}]})


def test_error_body() -> None:
    e = ErrorBody.parse(b'{"message":"size shall be a multiple of 8","details":[{"a":1}]}')
    assert e.message == "size shall be a multiple of 8"
    assert ErrorBody.from_json(e.to_json()) == e
    with pytest.raises(KmeProtocolError, match="message"):
        ErrorBody.parse(b'{"message": 5}')


# ------------------------------------------------------------------ properties

ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40)
exts = st.none() | st.dictionaries(
    st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3
)


@given(
    keys=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=8),
    ext=exts,
    kext=exts,
)
def test_container_round_trips(keys: list[bytes], ext: Any, kext: Any) -> None:
    c = KeyContainer(
        keys=tuple(Key(str(uuid.uuid4()), k, key_extension=kext) for k in keys), extension=ext
    )
    wire = json.dumps(c.to_json()).encode()
    assert KeyContainer.parse(wire, expected_number=len(keys)) == c


@given(
    src=ids, dst=ids, counts=st.lists(st.integers(0, 2**40), min_size=7, max_size=7), ext=exts
)
def test_status_round_trips(src: str, dst: str, counts: list[int], ext: Any) -> None:
    names = ["key_size", "stored_key_count", "max_key_count", "max_key_per_request",
             "max_key_size", "min_key_size", "max_sae_id_count"]
    s = Status(src, dst, "SAE_A", "SAE_B", **dict(zip(names, counts, strict=True)),
               status_extension=ext)
    assert Status.parse(json.dumps(s.to_json())) == s


@given(
    number=st.none() | st.integers(1, 10**6),
    size=st.none() | st.integers(1, 10**6),
    extra=st.lists(ids, max_size=4).map(tuple),
)
def test_key_request_round_trips(number: int | None, size: int | None, extra: tuple[str]) -> None:
    r = KeyRequest(number=number, size=size, additional_slave_sae_ids=extra)
    assert KeyRequest.parse(json.dumps(r.to_json())) == r


def _good_container_bytes() -> bytes:
    return json.dumps(container_json(2)).encode()


PARSERS: list[Callable[[bytes], object]] = [
    lambda b: Status.parse(b),
    lambda b: KeyContainer.parse(b, expected_number=2, expected_size_bits=256),
    lambda b: KeyRequest.parse(b),
    lambda b: KeyIDs.parse(b),
    lambda b: ErrorBody.parse(b),
]


@given(data=st.binary(max_size=300), which=st.integers(0, len(PARSERS) - 1))
def test_arbitrary_bytes_give_only_protocol_errors(data: bytes, which: int) -> None:
    with contextlib.suppress(KmeProtocolError):
        PARSERS[which](data)


@given(
    pos=st.integers(0, 10_000),
    byte=st.integers(0, 255),
    cut=st.booleans(),
    which=st.integers(0, len(PARSERS) - 1),
)
def test_mutated_bodies_give_only_protocol_errors(
    pos: int, byte: int, cut: bool, which: int
) -> None:
    bodies = [
        json.dumps(status_json()).encode(),
        _good_container_bytes(),
        json.dumps(KeyRequest(number=2, size=256).to_json()).encode(),
        json.dumps(KeyIDs.of([str(uuid.uuid4())]).to_json()).encode(),
        b'{"message":"x"}',
    ]
    body = bytearray(bodies[which])
    i = pos % len(body)
    if cut:
        del body[i:]
    else:
        body[i] = byte
    try:
        PARSERS[which](bytes(body))
    except KmeProtocolError as exc:
        assert SECRET_B64 not in str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@given(
    member=st.sampled_from(["keys", "key_ID", "key", "key_ID_extension", "key_extension"]),
    value=json_values,
)
def test_container_member_replaced_by_any_json_value(member: str, value: Any) -> None:
    body = container_json(1)
    if member == "keys":
        body["keys"] = value
    else:
        body["keys"][0][member] = value
    with contextlib.suppress(KmeProtocolError):
        KeyContainer.from_json(body, expected_number=1, expected_size_bits=256)


@given(
    member=st.sampled_from(sorted(status_json())),
    value=json_values,
)
def test_status_member_replaced_by_any_json_value(member: str, value: Any) -> None:
    with contextlib.suppress(KmeProtocolError):
        Status.from_json(status_json(**{member: value}))
