"""KmeClient against a FAKE KME (tests/kms/conftest.py: aiohttp over real mutual TLS) that
answers what real, deviant KMEs answer and the simulator never does: 404/409/422/500/504,
401 without a body, garbage, too many keys, a wrong certificate CN."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from kms_helpers import FAST_RETRY, FakeKme, json_response, key_json, make_client

from kms_client import (
    KmeBadRequest,
    KmeClient,
    KmeIdentityMismatch,
    KmeInvalidArgument,
    KmeKeyNotFound,
    KmeProtocolError,
    KmeUnauthorized,
    KmeUnavailable,
    KmsError,
    SaeCredentials,
)

Factory = Callable[..., Awaitable[FakeKme]]


def always(status: int, body: Any = None) -> Any:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if body is None:
            return web.Response(status=status)
        return json_response(status, body)

    return handler


def fail_then(fails: int, status: int, ok_body: Any, fail_body: Any = None) -> Any:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n < fails:
            if fail_body is None:
                return web.Response(status=status)
            return json_response(status, fail_body)
        return json_response(200, ok_body)

    return handler


def echo_keys(nbytes: int = 32) -> Any:
    """Answers dec_keys with the key_IDs asked for, enc_keys with `number` fresh keys."""

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if request.path.endswith("dec_keys"):
            if request.method == "GET":
                ids = [request.query["key_ID"]]
            else:
                ids = [e["key_ID"] for e in json.loads(await request.read())["key_IDs"]]
            body = key_json(len(ids), nbytes)
            for entry, kid in zip(body["keys"], ids, strict=True):
                entry["key_ID"] = kid
            return json_response(200, body)
        if request.method == "GET":
            number = int(request.query.get("number", "1"))
        else:
            number = json.loads(await request.read() or b"{}").get("number", 1)
        return json_response(200, key_json(number, nbytes))

    return handler


NOT_FOUND = {"message": "one or more keys specified are not found on KME"}
KID = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, None), (409, {"message": "conflict"}), (400, NOT_FOUND)],
)
async def test_dec_keys_waits_for_a_delayed_key(
    fake_kme_factory: Factory, pki: dict[str, Any], status: int, body: Any
) -> None:
    ok = key_json(1)
    ok["keys"][0]["key_ID"] = KID
    fake = await fake_kme_factory(fail_then(3, status, ok, body))
    async with make_client(pki, [fake.url]) as client:
        got = await client.dec_keys("SAE_B", [KID], deadline_s=5.0)
    assert got.key_ids == (KID,)
    assert fake.count == 4


@pytest.mark.parametrize(("status", "body"), [(404, None), (409, None), (400, NOT_FOUND)])
async def test_dec_keys_gives_up_at_the_deadline(
    fake_kme_factory: Factory, pki: dict[str, Any], status: int, body: Any
) -> None:
    fake = await fake_kme_factory(always(status, body))
    loop = asyncio.get_running_loop()
    async with make_client(pki, [fake.url]) as client:
        t0 = loop.time()
        with pytest.raises(KmeKeyNotFound) as info:
            await client.dec_keys("SAE_B", [KID], deadline_s=0.3)
        elapsed = loop.time() - t0
    assert info.value.key_ids == (KID,)
    assert 0.25 <= elapsed < 3.0
    assert fake.count >= 3  # it asked again while waiting


async def test_dec_keys_without_deadline_asks_once(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    fake = await fake_kme_factory(always(400, NOT_FOUND))
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(KmeKeyNotFound):
            await client.dec_keys("SAE_B", [KID])
    assert fake.count == 1


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (422, {"message": "validation failed"}, KmeBadRequest),
        (400, {"message": "size shall be a multiple of 8"}, KmeBadRequest),
        (401, None, KmeUnauthorized),
        (418, None, KmeProtocolError),
    ],
)
async def test_client_errors_are_typed_and_never_retried(
    fake_kme_factory: Factory, pki: dict[str, Any], status: int, body: Any, error: type
) -> None:
    fake = await fake_kme_factory(always(status, body))
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(error) as info:
            await client.enc_keys("SAE_B", number=2, size=256)
    assert fake.count == 1
    if body is not None and status != 418:
        assert body["message"] in str(info.value)


async def test_401_with_empty_body(fake_kme_factory: Factory, pki: dict[str, Any]) -> None:
    fake = await fake_kme_factory(always(401))
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(KmeUnauthorized, match="HTTP 401"):
            await client.dec_keys("SAE_B", [KID], deadline_s=1.0)
    assert fake.count == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retried_then_succeed(
    fake_kme_factory: Factory, pki: dict[str, Any], status: int
) -> None:
    fake = await fake_kme_factory(fail_then(2, status, key_json(2), {"message": "busy"}))
    async with make_client(pki, [fake.url]) as client:
        got = await client.enc_keys("SAE_B", number=2, size=256)
    assert len(got.keys) == 2
    assert fake.count == 3


@pytest.mark.parametrize("status", [500, 503, 504])
async def test_server_errors_exhaust_into_unavailable(
    fake_kme_factory: Factory, pki: dict[str, Any], status: int
) -> None:
    fake = await fake_kme_factory(always(status))
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(KmeUnavailable, match=f"HTTP {status}"):
            await client.enc_keys("SAE_B")
    assert fake.count == FAST_RETRY.attempts


async def test_timeouts_are_retried(fake_kme_factory: Factory, pki: dict[str, Any]) -> None:
    async def slow_first(request: web.Request, n: int) -> web.StreamResponse:
        if n == 0:
            await asyncio.sleep(1.0)
        return json_response(200, key_json(1))

    fake = await fake_kme_factory(slow_first)
    async with make_client(pki, [fake.url], timeout=0.3) as client:
        got = await client.enc_keys("SAE_B")
    assert len(got.keys) == 1
    assert fake.count == 2


@pytest.mark.parametrize(
    "body",
    [
        b"<html>oops</html>",
        json.dumps(key_json(3)).encode(),  # more keys than asked
        json.dumps({"keys": [{"key_ID": "nope", "key": "AAAA"}]}).encode(),
    ],
)
async def test_malformed_answers_are_protocol_errors(
    fake_kme_factory: Factory, pki: dict[str, Any], body: bytes
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=200, body=body, content_type="application/json")

    fake = await fake_kme_factory(handler)
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(KmeProtocolError):
            await client.enc_keys("SAE_B", number=2)


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_oversized_answer_is_refused_and_the_client_carries_on(
    fake_kme_factory: Factory, pki: dict[str, Any], chunked: bool
) -> None:
    """A KME that streams megabytes is cut off at the transport's bound, declared
    or not, and the next call on the same client is served."""
    from kms_client._transport import MAX_BODY

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n > 0:
            reply: web.StreamResponse = await echo_keys()(request, n)
            return reply
        if not chunked:
            return web.Response(status=200, body=b" " * (MAX_BODY + 1),
                                content_type="application/json")
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(MAX_BODY // 65536 + 2):
            await response.write(b" " * 65536)
        return response

    fake = await fake_kme_factory(handler)
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(KmeProtocolError, match="over the size limit"):
            await client.enc_keys("SAE_B", number=1)
        assert len((await client.enc_keys("SAE_B", number=1)).keys) == 1


async def test_key_of_wrong_size_is_refused(fake_kme_factory: Factory, pki: dict[str, Any]) -> None:
    fake = await fake_kme_factory(echo_keys(nbytes=16))
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(KmeProtocolError, match="16 bytes, 32 bytes were asked"):
            await client.enc_keys("SAE_B", number=1, size=256)


async def test_dec_keys_answer_must_hold_the_ids_asked(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    fake = await fake_kme_factory(always(200, key_json(1)))
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(KmeProtocolError, match="not the key_IDs asked for"):
            await client.dec_keys("SAE_B", [KID])


async def test_dec_keys_returns_keys_in_request_order(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    async def reversed_keys(request: web.Request, n: int) -> web.StreamResponse:
        ids = [e["key_ID"] for e in json.loads(await request.read())["key_IDs"]]
        body = key_json(len(ids))
        for entry, kid in zip(body["keys"], reversed(ids), strict=True):
            entry["key_ID"] = kid
        return json_response(200, body)

    fake = await fake_kme_factory(reversed_keys)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    async with make_client(pki, [fake.url]) as client:
        got = await client.dec_keys("SAE_B", ids)
    assert got.key_ids == tuple(ids)


async def test_wrong_kme_id_in_certificate(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    fake = await fake_kme_factory(echo_keys(), server_pair=pki["kme_x"])
    async with make_client(pki, [fake.url], kme_id="KME_A") as client:
        with pytest.raises(KmeIdentityMismatch, match=r"'KME_X'.*'KME_A'"):
            await client.enc_keys("SAE_B")
    assert fake.count == 0  # refused in the handshake: no request sent


async def test_client_cert_from_another_ca_is_unauthorized(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    fake = await fake_kme_factory(echo_keys())
    async with make_client(pki, [fake.url], sae="sae_rogue") as client:
        # TLS 1.3: the KME's refusal arrives as an alert (KmeUnauthorized) or, when the reset
        # overtakes the alert, as a reset on every attempt (KmeUnavailable); both say why.
        with pytest.raises((KmeUnauthorized, KmeUnavailable), match="certificate"):
            await client.status("SAE_B")
    assert fake.count == 0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_failover_to_second_endpoint_and_stick_to_it(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    down = await fake_kme_factory(always(503, {"message": "down"}))
    up = await fake_kme_factory(echo_keys())
    dead = f"https://127.0.0.1:{_closed_port()}"
    async with make_client(pki, [dead, down.url, up.url]) as client:
        await client.enc_keys("SAE_B")
        assert down.count == FAST_RETRY.attempts
        await client.enc_keys("SAE_B")
    assert up.count == 2
    assert down.count == FAST_RETRY.attempts  # the working endpoint is tried first afterwards


async def test_all_endpoints_down(pki: dict[str, Any]) -> None:
    urls = [f"https://127.0.0.1:{_closed_port()}" for _ in range(2)]
    async with make_client(pki, urls) as client:
        with pytest.raises(KmeUnavailable, match="no KME could serve"):
            await client.status("SAE_B")


async def test_connection_is_reused(fake_kme_factory: Factory, pki: dict[str, Any]) -> None:
    fake = await fake_kme_factory(echo_keys())
    async with make_client(pki, [fake.url]) as client:
        for _ in range(5):
            await client.enc_keys("SAE_B")
    assert len({s.peer_port for s in fake.seen}) == 1


async def test_drop_connections_closes_and_the_client_goes_on(
        fake_kme_factory: Factory, pki: dict[str, Any]) -> None:
    """An SAE that calls minutes apart drops its connection after each call: the
    next call opens a new one (a new client port), and the client still works."""
    fake = await fake_kme_factory(echo_keys())
    async with make_client(pki, [fake.url]) as client:
        for _ in range(3):
            got = await client.enc_keys("SAE_B")
            assert len(got.keys) == 1
            await client.drop_connections()
    assert len({s.peer_port for s in fake.seen}) == 3


async def test_request_forms_on_the_wire(fake_kme_factory: Factory, pki: dict[str, Any]) -> None:
    fake = await fake_kme_factory(echo_keys(nbytes=33))
    ext_m = [{"abc_route": "direct"}]
    ext_o = [{"abc_qos": 1}]
    async with make_client(pki, [fake.url]) as client:
        await client.enc_keys("SAE/B x", number=2, size=264, method="GET")
        await client.enc_keys(
            "SAE_B", number=1, size=264, additional_slave_sae_ids=["SAE_C"],
            extension_mandatory=ext_m, extension_optional=ext_o,
        )
        await client.dec_keys("SAE_M", [KID], method="GET")
        await client.dec_keys("SAE_M", [KID])
    get_enc, post_enc, get_dec, post_dec = fake.seen
    assert (get_enc.method, get_enc.path) == ("GET", "/api/v1/keys/SAE%2FB%20x/enc_keys")
    assert get_enc.query == {"number": "2", "size": "264"}
    assert post_enc.method == "POST" and post_enc.path == "/api/v1/keys/SAE_B/enc_keys"
    assert json.loads(post_enc.body) == {
        "number": 1, "size": 264, "additional_slave_SAE_IDs": ["SAE_C"],
        "extension_mandatory": ext_m, "extension_optional": ext_o,
    }
    assert get_dec.path == "/api/v1/keys/SAE_M/dec_keys" and get_dec.query == {"key_ID": KID}
    assert json.loads(post_dec.body) == {"key_IDs": [{"key_ID": KID}]}


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.enc_keys("SAE_B", number=0),
        lambda c: c.enc_keys("SAE_B", size=-1),
        lambda c: c.enc_keys("", number=1),
        lambda c: c.enc_keys("SAE_B", additional_slave_sae_ids=["SAE_C"], method="GET"),
        lambda c: c.dec_keys("SAE_B", []),
        lambda c: c.dec_keys("SAE_B", ["not-a-uuid"]),
        lambda c: c.dec_keys("SAE_B", [KID, KID]),
        lambda c: c.dec_keys("SAE_B", [KID, str(uuid.uuid4())], method="GET"),
        lambda c: c.dec_keys("SAE_B", [KID], method="PUT"),
    ],
)
async def test_bad_arguments_fail_before_any_request(
    fake_kme_factory: Factory, pki: dict[str, Any], call: Any
) -> None:
    fake = await fake_kme_factory(echo_keys())
    async with make_client(pki, [fake.url]) as client:
        with pytest.raises(KmeInvalidArgument):
            await call(client)
    assert fake.count == 0


async def test_no_key_in_logs_or_errors(
    fake_kme_factory: Factory, pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    body = key_json(2)
    secret = body["keys"][0]["key"]
    fake = await fake_kme_factory(fail_then(1, 503, body, {"message": "busy"}))
    caplog.set_level(logging.DEBUG)
    async with make_client(pki, [fake.url]) as client:
        got = await client.enc_keys("SAE_B", number=2)
        with pytest.raises(KmsError) as info:
            await client.enc_keys("SAE_B", number=3)  # 2 keys come back: protocol error
    assert secret not in caplog.text
    assert secret not in str(info.value) and secret not in repr(got)
    assert "retry" in caplog.text  # the 503 was logged, without a body


async def test_closed_client_refuses(fake_kme_factory: Factory, pki: dict[str, Any]) -> None:
    fake = await fake_kme_factory(echo_keys())
    client = make_client(pki, [fake.url])
    await client.aclose()
    with pytest.raises(KmsError, match="closed"):
        await client.enc_keys("SAE_B")


async def test_dec_keys_can_name_the_master_in_each_entry_for_deviant_kmes(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    fake = await fake_kme_factory(echo_keys())
    plain = make_client(pki, [fake.url])
    quirky = KmeClient(plain.endpoints, SaeCredentials("SAE_A", pki["sae_a"].cert,
                                                       pki["sae_a"].key),
                       timeout=2.0, retry=FAST_RETRY, key_ids_name_master=True)
    async with plain, quirky:
        await plain.dec_keys("SAE_B", [KID])
        await quirky.dec_keys("SAE_B", [KID])
    spec, vendor = (json.loads(s.body)["key_IDs"][0] for s in fake.seen)
    assert spec == {"key_ID": KID}  # the standard body names no master
    assert vendor == {"key_ID": KID, "master_SAE_ID": "SAE_B"}
