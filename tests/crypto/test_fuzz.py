"""Hypothesis fuzzing of the decoder: only DecodeError ever escapes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.handshake import DecodeError
from gateway.handshake.codec import decode
from gateway.handshake.messages import PROTOCOL_VERSION


def _decode_only_typed_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    # Start like a real message so the fuzzer reaches past the header checks.
    msg_type = draw(st.integers(0, 6))
    body = draw(st.binary(max_size=400))
    return bytes((PROTOCOL_VERSION, msg_type)) + body


@given(st.one_of(st.binary(max_size=300), near_valid()))
def test_decoder_raises_only_decode_error(data: bytes) -> None:
    _decode_only_typed_error(data)


@pytest.mark.slow
@given(st.one_of(st.binary(max_size=2000), near_valid()))
def test_decoder_fuzz_long(data: bytes) -> None:
    # QSGW_HYPOTHESIS_PROFILE=slow runs this with 100,000 examples.
    _decode_only_typed_error(data)


def test_mutated_real_messages_raise_only_decode_error(
    identities: tuple[object, object],
) -> None:
    from tests.crypto.conftest import drive, make_params

    run, _, _ = drive(*make_params(identities))  # type: ignore[arg-type]

    @given(st.sampled_from([run.init, run.resp, run.finish, run.done]),
           st.lists(st.tuples(st.integers(0, 70000), st.integers(0, 255)), max_size=8),
           st.integers(0, 70000))
    def inner(msg: bytes, edits: list[tuple[int, int]], cut: int) -> None:
        m = bytearray(msg[:cut] if cut < len(msg) else msg)
        for pos, val in edits:
            if m:
                m[pos % len(m)] = val
        _decode_only_typed_error(bytes(m))

    inner()


def test_oversized_and_unknown_are_refused() -> None:
    for data in (b"", b"\x01", b"\x02\x01" + b"\x00" * 50, b"\x01\x09", b"\x01\x01" * 40000):
        with pytest.raises(DecodeError):
            decode(data)
