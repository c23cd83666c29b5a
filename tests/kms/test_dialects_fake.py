"""Every row of the KME dialect table against a FAKE KME showing exactly that deviation
(answers the simulator, being conforming, never gives), read with the row's dialect and
with the strict ``etsi`` dialect, which must not be changed by any other dialect's row."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from kms_helpers import FakeKme, json_response, key_json, make_client

from kms_client import (
    DIALECTS,
    KmeBadRequest,
    KmeKeyNotFound,
    KmeUnauthorized,
    Rule,
    get_dialect,
)

Factory = Callable[..., Awaitable[FakeKme]]

# The words the field's KMEs answered, for each row's message pattern.
FIELD_WORDS = {
    "requested key amount exceeds the generated key count":
        "The requested key amount exceeds the generated key count. Try again later.",
    "more keys are requested than available":
        "Unable, because more keys are requested than available",
    "not involved in any key exchanges":
        "The given master_sae_id is not involved in any key exchanges.",
    "requested keys do not exist": "Some of the requested keys do not exist in this KME.",
    "do not exist": "Some of the requested keys do not exist in this KME.",
    None: "1 validation error for KeyRequest: number: Input should be a valid integer",
}

ROWS = [(d.name, n, r) for d in DIALECTS.values() for n, r in enumerate(d.rules)]


def deviant(rule: Rule, times: int) -> Any:
    """A FAKE KME: the row's answer `times` times, then a good answer."""

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n < times:
            return json_response(rule.status, {"message": FIELD_WORDS[rule.message]})
        if request.path.endswith("dec_keys"):
            ids = [e["key_ID"] for e in json.loads(await request.read())["key_IDs"]]
            body = key_json(len(ids))
            for entry, kid in zip(body["keys"], ids, strict=True):
                entry["key_ID"] = kid
            return json_response(200, body)
        return json_response(200, key_json(1))

    return handler


async def _call(client: Any, call: str) -> Any:
    if call == "dec_keys":
        return await client.dec_keys("SAE_B", [str(uuid.uuid4())], deadline_s=5.0)
    return await client.enc_keys("SAE_B")


@pytest.mark.parametrize(("dialect", "n", "rule"), ROWS, ids=[f"{d}-{n}" for d, n, _ in ROWS])
async def test_row_against_its_fake(
    fake_kme_factory: Factory, pki: dict[str, Any], dialect: str, n: int, rule: Rule
) -> None:
    call = rule.calls[-1] if rule.calls[-1] != "status" else "enc_keys"
    fake = await fake_kme_factory(deviant(rule, 2))
    async with make_client(pki, [fake.url], dialect=dialect) as client:
        if rule.means in ("unavailable", "not-found", "not-yet"):
            # A shortage is retried; a key not (yet) there is polled for: both then succeed.
            got = await _call(client, call)
            assert len(got.keys) == 1 and fake.count == 3
        else:
            with pytest.raises(KmeBadRequest if rule.means == "bad-request" else KmeUnauthorized):
                await _call(client, call)
            assert fake.count == 1


@pytest.mark.parametrize(("dialect", "n", "rule"), ROWS, ids=[f"{d}-{n}" for d, n, _ in ROWS])
async def test_row_does_not_change_the_etsi_reading(
    fake_kme_factory: Factory, pki: dict[str, Any], dialect: str, n: int, rule: Rule
) -> None:
    call = rule.calls[-1] if rule.calls[-1] != "status" else "enc_keys"
    fake = await fake_kme_factory(deviant(rule, 100))
    async with make_client(pki, [fake.url], dialect="etsi") as client:
        expected = KmeUnauthorized if rule.status == 401 else KmeBadRequest
        with pytest.raises(expected) as info:
            await _call(client, call)
    assert not isinstance(info.value, KmeKeyNotFound)
    assert fake.count == 1  # final at once: neither retried nor polled


async def test_unknown_key_polled_until_the_deadline_then_not_found(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    rule = get_dialect("oss-flask").rules[2]
    fake = await fake_kme_factory(deviant(rule, 10_000))
    async with make_client(pki, [fake.url], dialect="oss-flask") as client:
        with pytest.raises(KmeKeyNotFound, match="do not exist"):
            await client.dec_keys("SAE_B", [str(uuid.uuid4())], deadline_s=0.2)
    assert fake.count > 2


@pytest.mark.parametrize("dialect", list(DIALECTS))
@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "size shall be a multiple of 8", KmeBadRequest),
        (400, "not all extension_mandatory parameters are supported", KmeBadRequest),
        (401, "", KmeUnauthorized),
    ],
)
async def test_conforming_answers_read_alike_in_every_dialect(
    fake_kme_factory: Factory, pki: dict[str, Any], dialect: str, status: int, message: str,
    expected: type[Exception],
) -> None:
    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if not message:
            return web.Response(status=status)
        return json_response(status, {"message": message})

    fake = await fake_kme_factory(handler)
    async with make_client(pki, [fake.url], dialect=dialect) as client:
        with pytest.raises(expected):
            await client.enc_keys("SAE_B", size=257 if "8" in message else None)
    assert fake.count == 1


async def test_key_ids_master_dialect_names_the_master_in_each_entry(
    fake_kme_factory: Factory, pki: dict[str, Any]
) -> None:
    fake = await fake_kme_factory(deviant(Rule(400, "bad-request"), 0))
    async with make_client(pki, [fake.url], dialect="key-ids-master") as client:
        await client.dec_keys("SAE_B", [str(uuid.uuid4())])
    sent = json.loads(fake.seen[0].body)
    assert sent["key_IDs"][0]["master_SAE_ID"] == "SAE_B"


async def test_custom_rules_come_first(fake_kme_factory: Factory, pki: dict[str, Any]) -> None:
    custom = get_dialect("etsi").with_rules(
        [Rule(400, "unavailable", ("enc_keys",), "pool is being refilled")]
    )

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        if n == 0:
            return json_response(400, {"message": "Pool is being refilled"})
        return json_response(200, key_json(1))

    fake = await fake_kme_factory(handler)
    async with make_client(pki, [fake.url], dialect=custom) as client:
        assert len((await client.enc_keys("SAE_B")).keys) == 1
    assert fake.count == 2
