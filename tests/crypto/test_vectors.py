"""The published combiner vectors (docs/test-vectors.json) and ETSI TS 103 744's own."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.crypto.combiner import catkdf_hkdf, combine

DOC = Path(__file__).resolve().parents[2] / "docs" / "test-vectors.json"
ETSI = Path(__file__).resolve().parent / "data" / "etsi_ts103744_catkdf_hkdf.json"
ETSI_DOC = json.loads(ETSI.read_text())


def _combine(doc: dict[str, Any], v: dict[str, Any], **over: Any) -> bytearray:
    args: dict[str, Any] = {
        "qkd": None if v["qkd"] is None else bytes.fromhex(v["qkd"]),
        "kems": [(n, bytes.fromhex(s)) for n, s in v["kems"]],
        "suite": v["suite"], "transcript_hash": bytes.fromhex(doc["transcript_hash"]),
        "ma": bytes.fromhex(doc["MA"]), "mb": bytes.fromhex(doc["MB"]),
    }
    args.update(over)
    qkd, kems = args.pop("qkd"), args.pop("kems")
    return combine(qkd, kems, **args).tunnel_key


def test_published_vectors_reproduced() -> None:
    doc = json.loads(DOC.read_text())
    assert {v["suite"] for v in doc["vectors"]} >= {
        "default", "mlkem1024", "frodo976aes", "frodo1344shake", "hqc3", "mceliece460896f"}
    for v in doc["vectors"]:
        qkd = None if v["qkd"] is None else bytes.fromhex(v["qkd"])
        keys = combine(qkd, [(n, bytes.fromhex(s)) for n, s in v["kems"]], suite=v["suite"],
                       transcript_hash=bytes.fromhex(doc["transcript_hash"]),
                       ma=bytes.fromhex(doc["MA"]), mb=bytes.fromhex(doc["MB"]))
        assert keys.tunnel_key.hex() == v["tunnel_key"], v["name"]
        assert keys.initiator_confirm.hex() == v["initiator_confirm"], v["name"]
        assert keys.responder_confirm.hex() == v["responder_confirm"], v["name"]


def test_each_input_changes_the_key() -> None:
    doc = json.loads(DOC.read_text())
    v = doc["vectors"][0]
    base = _combine(doc, v)
    qkd = bytes.fromhex(v["qkd"])
    kems = [(n, bytes.fromhex(s)) for n, s in v["kems"]]
    assert _combine(doc, v, qkd=bytes([qkd[0] ^ 1]) + qkd[1:]) != base
    for i in range(len(kems)):
        changed = list(kems)
        changed[i] = (kems[i][0], bytes([kems[i][1][0] ^ 1]) + kems[i][1][1:])
        assert _combine(doc, v, kems=changed) != base
    assert _combine(doc, v, transcript_hash=bytes(48)) != base
    assert _combine(doc, v, suite="mlkem1024") != base
    assert _combine(doc, v, ma=b"other INIT") != base
    assert _combine(doc, v, mb=b"other RESP") != base
    # Absent QKD is not the same as an all-zero QKD key.
    assert _combine(doc, v, qkd=None) != _combine(doc, v, qkd=bytes(32))


def _hkdf(hash_name: str, salt: bytes, ikm: bytes, info: bytes, n: int) -> bytes:
    # RFC 5869 written out with hmac, independent of the code under test.
    prk = hmac.new(salt, ikm, hash_name).digest()
    out, block, i = b"", b"", 1
    while len(out) < n:
        block = hmac.new(prk, block + info + bytes([i]), hash_name).digest()
        out += block
        i += 1
    return out[:n]


def _context(hash_name: str, *parts: bytes) -> bytes:
    return hashlib.new(hash_name, b"".join(len(p).to_bytes(4, "big") + p for p in parts)).digest()


def test_vectors_follow_the_documented_formula() -> None:
    doc = json.loads(DOC.read_text())
    ma, mb = bytes.fromhex(doc["MA"]), bytes.fromhex(doc["MB"])
    for v in doc["vectors"]:
        secrets = dict((n, bytes.fromhex(s)) for n, s in v["kems"])
        order = v["secrets_order"].split(" || ")
        assert order[:2] == ["psk", "X25519"]
        ikm = (bytes.fromhex(v["qkd"]) if v["qkd"] else b"") + b"".join(
            secrets[n] for n in order[1:])
        context = _context("sha384", bytes.fromhex(v["info"]), ma, mb)
        assert _hkdf("sha384", b"qsgw/2 tunnel key", ikm, context, 32).hex() == v["tunnel_key"]
        assert _hkdf("sha384", b"qsgw/2 responder confirm", ikm, context, 48).hex() == v[
            "responder_confirm"]
        assert v["suite"].encode() in bytes.fromhex(v["info"])
        assert (b"qkd:absent" in bytes.fromhex(v["info"])) == (v["qkd"] is None)


def _etsi_message(cid: str, *fields: str) -> bytes:
    # The reference implementation's test-only format: CID bytes, then per field
    # a u32be of its *hex-character* count and its bytes.
    out = bytes.fromhex(cid)
    for f in fields:
        out += len(f).to_bytes(4, "big") + bytes.fromhex(f)
    return out


@pytest.mark.parametrize("v", ETSI_DOC["vectors"], ids=lambda v: v["cid"])
def test_etsi_ts103744_catkdf_hkdf_vectors(v: dict[str, str]) -> None:
    ma = _etsi_message(v["cid"], v["LA"], v["PA1"], v["PA2"])
    mb = _etsi_message(v["cid"], v["LB"], v["PB1"], v["PB2"])
    label = bytes(a ^ b for a, b in zip(bytes.fromhex(v["LA"]), bytes.fromhex(v["LB"]),
                                        strict=True))
    assert label.hex().upper() == v["label"]
    expected = bytes.fromhex(v["key_material"])
    got = catkdf_hkdf(v["hash"], bytes.fromhex(ETSI_DOC["psk"]),
                      [bytes.fromhex(v["k1"]), bytes.fromhex(v["k2"])], ma, mb,
                      v["info"].encode(), label, len(expected))
    assert bytes(got) == expected


def test_etsi_vectors_cover_the_required_parameter_sets() -> None:
    cids = {v["cid"] for v in ETSI_DOC["vectors"]}
    assert {"1721", "2221", "2821", "2231"} <= cids and len(cids) == 12
    assert all(v["info"] == "ETSI_QSHKE_TEST_VECTORS_V_1_2" for v in ETSI_DOC["vectors"])
