"""The ETSI GS QKD 014 endpoints over real mutual TLS on loopback."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from simsupport import ClientFactory, tls_context

from kms_client.sim.server import Simulator

ENC = "/api/v1/keys/{}/enc_keys"
DEC = "/api/v1/keys/{}/dec_keys"
STATUS = "/api/v1/keys/{}/status"


async def test_status_describes_the_link(sim: Simulator, client_for: ClientFactory) -> None:
    r = await client_for("SAE_A1").get(STATUS.format("SAE_B"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {
        "source_KME_ID": "KME_A",
        "target_KME_ID": "KME_B",
        "master_SAE_ID": "SAE_A1",
        "slave_SAE_ID": "SAE_B",
        "key_size": 256,
        "stored_key_count": 64,
        "max_key_count": 64,
        "max_key_per_request": 8,
        "max_key_size": 512,
        "min_key_size": 64,
        "max_SAE_ID_count": 2,
        "status_extension": {
            "qsgw_route": {"kind": "point_to_point", "link": "ab", "path": ["KME_A", "KME_B"]}
        },
    }


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_keys_match_at_both_ends_and_are_single_use(
    sim: Simulator, client_for: ClientFactory, method: str
) -> None:
    a, b = client_for("SAE_A1"), client_for("SAE_B")
    if method == "GET":
        r = await a.get(ENC.format("SAE_B"), params={"number": 3, "size": 128})
    else:
        r = await a.post(ENC.format("SAE_B"), json={"number": 3, "size": 128})
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert len(keys) == 3
    assert len({k["key_ID"] for k in keys}) == 3
    assert all(len(base64.b64decode(k["key"], validate=True)) == 16 for k in keys)
    ids = [k["key_ID"] for k in keys]
    if method == "GET":
        got = []
        for kid in ids:
            d = await b.get(DEC.format("SAE_A1"), params={"key_ID": kid})
            assert d.status_code == 200, d.text
            got += d.json()["keys"]
    else:
        d = await b.post(DEC.format("SAE_A1"), json={"key_IDs": [{"key_ID": i} for i in ids]})
        assert d.status_code == 200, d.text
        got = d.json()["keys"]
    assert [(k["key_ID"], k["key"]) for k in got] == [(k["key_ID"], k["key"]) for k in keys]
    # Single use: the slave cannot fetch them again.
    again = await b.get(DEC.format("SAE_A1"), params={"key_ID": ids[0]})
    assert again.status_code == 400
    assert again.json() == {"message": "one or more keys specified are not found on KME"}
    assert sim.delivered_key_ids("SAE_A1") == ids
    assert sim.delivered_key_ids("SAE_B") == ids
    # The pool paid for them: 3 x 128 bits of 16384.
    st = (await a.get(STATUS.format("SAE_B"))).json()
    assert st["stored_key_count"] == (16384 - 384) // 256


async def test_defaults_give_one_key_of_key_size(client_for: ClientFactory) -> None:
    for r in (
        await client_for("SAE_A1").post(ENC.format("SAE_B")),
        await client_for("SAE_A1").get(ENC.format("SAE_B")),
        await client_for("SAE_A1").post(ENC.format("SAE_B"), json={}),
    ):
        assert r.status_code == 200, r.text
        (key,) = r.json()["keys"]
        assert len(base64.b64decode(key["key"])) == 32


async def test_key_goes_to_the_named_slave_only(sim: Simulator, client_for: ClientFactory) -> None:
    r = await client_for("SAE_A1").post(ENC.format("SAE_B"), json={"number": 1})
    kid = r.json()["keys"][0]["key_ID"]
    body = {"key_IDs": [{"key_ID": kid}]}
    # The master itself, and another SAE of the master's KME, are not the slave.
    for sae in ("SAE_A1", "SAE_A2"):
        d = await client_for(sae).post(DEC.format("SAE_A1"), json=body)
        assert d.status_code == 401, (sae, d.text)
    # The slave, asking the wrong KME, is refused too.
    d = await client_for("SAE_B", kme="KME_A").post(DEC.format("SAE_A1"), json=body)
    assert d.status_code == 401
    assert sim.delivered_key_ids("SAE_B") == []
    # The refusals lost nothing: the slave still gets the key once.
    d = await client_for("SAE_B").post(DEC.format("SAE_A1"), json=body)
    assert d.status_code == 200
    assert d.json()["keys"][0]["key"] == r.json()["keys"][0]["key"]


async def test_sae_is_served_only_by_its_own_kme(client_for: ClientFactory) -> None:
    wrong = client_for("SAE_A1", kme="KME_B")
    for req in (
        wrong.get(STATUS.format("SAE_B")),
        wrong.post(ENC.format("SAE_B")),
        wrong.get(ENC.format("SAE_B")),
        wrong.get("/api/v1/noop"),
    ):
        assert (await req).status_code == 401


async def test_dec_keys_is_all_or_nothing(sim: Simulator, client_for: ClientFactory) -> None:
    r = await client_for("SAE_A1").post(ENC.format("SAE_B"), json={"number": 2})
    ids = [k["key_ID"] for k in r.json()["keys"]]
    b = client_for("SAE_B")
    unknown = "00000000-0000-4000-8000-000000000000"
    d = await b.post(
        DEC.format("SAE_A1"), json={"key_IDs": [{"key_ID": ids[0]}, {"key_ID": unknown}]}
    )
    assert d.status_code == 400
    assert d.json()["message"] == "one or more keys specified are not found on KME"
    assert sim.delivered_key_ids("SAE_B") == []
    # Keys asked for under the wrong master are not found either.
    d = await b.post(DEC.format("SAE_C"), json={"key_IDs": [{"key_ID": ids[0]}]})
    assert d.status_code == 400
    d = await b.post(DEC.format("SAE_A1"), json={"key_IDs": [{"key_ID": i} for i in ids]})
    assert d.status_code == 200
    assert [k["key_ID"] for k in d.json()["keys"]] == ids


async def test_multicast_delivers_to_each_named_slave_once(
    sim: Simulator, client_for: ClientFactory
) -> None:
    a = client_for("SAE_A1")
    r = await a.post(
        ENC.format("SAE_B"), json={"number": 2, "additional_slave_SAE_IDs": ["SAE_C", "SAE_A2"]}
    )
    assert r.status_code == 200, r.text
    keys = {k["key_ID"]: k["key"] for k in r.json()["keys"]}
    body = {"key_IDs": [{"key_ID": i} for i in keys]}
    for sae in ("SAE_B", "SAE_C", "SAE_A2"):
        d = await client_for(sae).post(DEC.format("SAE_A1"), json=body)
        assert d.status_code == 200, (sae, d.text)
        assert {k["key_ID"]: k["key"] for k in d.json()["keys"]} == keys
        again = await client_for(sae).post(DEC.format("SAE_A1"), json=body)
        assert again.status_code == 400
    assert sim.delivered_key_ids("SAE_C") == list(keys)
    too_many = await a.post(
        ENC.format("SAE_B"), json={"additional_slave_SAE_IDs": ["SAE_C", "SAE_A2", "SAE_B"]}
    )
    assert too_many.status_code == 400
    assert "max_SAE_ID_count" in too_many.json()["message"]


async def test_multicast_refuses_an_sae_not_named(client_for: ClientFactory) -> None:
    r = await client_for("SAE_A1").post(
        ENC.format("SAE_B"), json={"additional_slave_SAE_IDs": ["SAE_C"]}
    )
    body = {"key_IDs": [{"key_ID": r.json()["keys"][0]["key_ID"]}]}
    assert (await client_for("SAE_A2").post(DEC.format("SAE_A1"), json=body)).status_code == 401
    assert (await client_for("SAE_C").post(DEC.format("SAE_A1"), json=body)).status_code == 200


async def test_relay_keys_show_their_path(client_for: ClientFactory) -> None:
    r = await client_for("SAE_A1").post(ENC.format("SAE_C"), json={"number": 1})
    assert r.status_code == 200
    key = r.json()["keys"][0]
    assert key["key_ID_extension"]["qsgw_route"]["path"] == ["KME_A", "KME_B", "KME_C"]
    d = await client_for("SAE_C").get(DEC.format("SAE_A1"), params={"key_ID": key["key_ID"]})
    assert d.json()["keys"][0]["key"] == key["key"]
    assert d.json()["keys"][0]["key_ID_extension"]["qsgw_route"]["kind"] == "trusted_relay"


BAD_ENC = [
    ({"size": 100}, "size shall be a multiple of 8"),
    ({"size": 1024}, "size must be between min_key_size (64) and max_key_size (512)"),
    ({"size": 32}, "size must be between min_key_size (64) and max_key_size (512)"),
    ({"number": 9}, "number exceeds max_key_per_request (8)"),
    ({"number": 0}, "number must be at least 1"),
    ({"number": "2"}, "number must be an integer"),
    (
        {"extension_mandatory": [{"abc_route": "x"}]},
        "not all extension_mandatory parameters are supported",
    ),
    ({"extension_mandatory": "x"}, "extension_mandatory must be an array of objects"),
    ({"additional_slave_SAE_IDs": ["SAE_NOBODY"]}, "unknown slave SAE ID"),
    ({"additional_slave_SAE_IDs": ["SAE_D"]}, "no QKD link from KME_A to KME_D"),
    ({"additional_slave_SAE_IDs": ["SAE_B"]}, "additional_slave_SAE_IDs repeats a slave SAE ID"),
]


@pytest.mark.parametrize(("body", "message"), BAD_ENC)
async def test_enc_keys_bad_requests(
    sim: Simulator, client_for: ClientFactory, body: dict[str, object], message: str
) -> None:
    r = await client_for("SAE_A1").post(ENC.format("SAE_B"), json=body)
    assert r.status_code == 400
    assert r.json() == {"message": message}
    assert sim.delivered_key_ids("SAE_A1") == []
    st = (await client_for("SAE_A1").get(STATUS.format("SAE_B"))).json()
    assert st["stored_key_count"] == 64  # nothing was taken


async def test_enc_keys_get_form_errors(client_for: ClientFactory) -> None:
    a = client_for("SAE_A1")
    r = await a.get(ENC.format("SAE_B"), params={"size": 12})
    assert r.json() == {"message": "size shall be a multiple of 8"}
    r = await a.get(ENC.format("SAE_B"), params={"number": "x"})
    assert r.status_code == 400
    r = await a.get(ENC.format("SAE_B"), params={"additional_slave_SAE_IDs": "SAE_C"})
    assert r.status_code == 400
    assert "POST" in r.json()["message"]


@pytest.mark.parametrize(
    ("path", "content", "message"),
    [
        (ENC, b"[1]", "request body must be a JSON object"),
        (ENC, b"{not json", "request body is not valid JSON"),
        (DEC, b"", "request body must be a JSON object"),
        (DEC, b'{"key_IDs": []}', "key_IDs must be a non-empty array"),
        (
            DEC,
            b'{"key_IDs": [{"id": 1}]}',
            "each key_IDs entry must be an object with a key_ID string",
        ),
    ],
)
async def test_malformed_bodies(
    client_for: ClientFactory, path: str, content: bytes, message: str
) -> None:
    sae, peer = ("SAE_A1", "SAE_B") if path == ENC else ("SAE_B", "SAE_A1")
    r = await client_for(sae).post(
        path.format(peer), content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json() == {"message": message}


async def test_dec_keys_get_form_takes_one_key_id(client_for: ClientFactory) -> None:
    b = client_for("SAE_B")
    r = await b.get(DEC.format("SAE_A1") + "?key_ID=a&key_ID=b")
    assert r.status_code == 400
    r = await b.get(DEC.format("SAE_A1"))
    assert r.status_code == 400


async def test_unknown_and_unlinked_slaves(client_for: ClientFactory) -> None:
    a = client_for("SAE_A1")
    r = await a.get(STATUS.format("SAE_NOBODY"))
    assert (r.status_code, r.json()) == (400, {"message": "unknown slave SAE ID"})
    r = await a.post(ENC.format("SAE_D"))
    assert (r.status_code, r.json()) == (400, {"message": "no QKD link from KME_A to KME_D"})
    r = await a.post(ENC.format("SAE_A1"))
    assert r.status_code == 400


async def test_empty_pool_answers_503_and_keeps_what_is_left(
    sim: Simulator, client_for: ClientFactory
) -> None:
    a = client_for("SAE_A1")
    for _ in range(8):  # 8 x 8 keys of 256 bits = the whole pool of 16384 bits
        assert (await a.post(ENC.format("SAE_B"), json={"number": 8})).status_code == 200
    r = await a.post(ENC.format("SAE_B"), json={"number": 1})
    assert r.status_code == 503
    assert r.json()["message"] == "not enough key material on the QKD link for this request"
    assert r.json()["details"] == [{"requested_key_count": 1, "stored_key_count": 0}]
    assert (await a.get(STATUS.format("SAE_B"))).json()["stored_key_count"] == 0
    # Two SAEs of one KME draw from the KME's own source, not from the exhausted link.
    assert (await a.post(ENC.format("SAE_A2"))).status_code == 200


async def test_same_kme_pair(client_for: ClientFactory) -> None:
    r = await client_for("SAE_A1").post(ENC.format("SAE_A2"), json={"number": 2})
    assert r.status_code == 200
    ids = [k["key_ID"] for k in r.json()["keys"]]
    d = await client_for("SAE_A2").post(
        DEC.format("SAE_A1"), json={"key_IDs": [{"key_ID": i} for i in ids]}
    )
    assert [k["key"] for k in d.json()["keys"]] == [k["key"] for k in r.json()["keys"]]


async def test_noop_round_trip(client_for: ClientFactory) -> None:
    r = await client_for("SAE_B").get("/api/v1/noop")
    assert (r.status_code, r.json()) == (200, {})


async def test_client_without_certificate_is_refused_at_tls(sim: Simulator) -> None:
    k = sim.endpoints["kmes"]["KME_A"]
    async with httpx.AsyncClient(base_url=k["url"], verify=tls_context(k["ca"])) as c:
        with pytest.raises(httpx.TransportError):
            await c.get(STATUS.format("SAE_B"))


def _foreign_cert(tmp_path: Path, cn: str) -> tuple[str, str]:
    """A certificate with a known SAE's CN but issued by another CA."""
    import datetime as dt

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cp, kp = tmp_path / "evil.crt", tmp_path / "evil.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cp), str(kp)


async def test_certificate_from_another_ca_is_refused_at_tls(
    sim: Simulator, tmp_path: Path
) -> None:
    k = sim.endpoints["kmes"]["KME_B"]
    cert, key = _foreign_cert(tmp_path, "SAE_B")
    async with httpx.AsyncClient(base_url=k["url"], verify=tls_context(k["ca"], cert, key)) as c:
        with pytest.raises(httpx.TransportError):
            await c.get(STATUS.format("SAE_A1"))
    assert sim.delivered_key_ids("SAE_B") == []


async def test_server_certificate_names_the_kme(sim: Simulator) -> None:
    k = sim.endpoints["kmes"]["KME_C"]
    s = sim.endpoints["saes"]["SAE_C"]
    ctx = tls_context(k["ca"], s["cert"], s["key"])
    async with httpx.AsyncClient(base_url=k["url"], verify=ctx) as c:
        r = await c.get("/api/v1/noop")
        assert r.status_code == 200
        ssl_obj = r.extensions["network_stream"].get_extra_info("ssl_object")
        assert isinstance(ssl_obj, ssl.SSLObject)
        peer = ssl_obj.getpeercert()
        assert peer is not None
        assert (("commonName", "KME_C"),) in peer["subject"]


async def test_dec_keys_refuses_more_key_ids_than_max_key_per_request(
    client_for: ClientFactory,
) -> None:
    ids = [{"key_ID": f"00000000-0000-4000-8000-00000000000{i}"} for i in range(9)]
    r = await client_for("SAE_B").post(DEC.format("SAE_A1"), json={"key_IDs": ids})
    assert (r.status_code, r.json()) == (
        400,
        {"message": "key_IDs exceeds max_key_per_request (8)"},
    )
