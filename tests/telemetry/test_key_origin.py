"""Where each QKD key came from: the summary, the epoch audit record and event, `audit show`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main as qsgw_main
from gateway.telemetry import AuditLog, Telemetry, verify_files
from gateway.telemetry.key_origin import describe_origin, key_origin, key_origins

KID = "3f1e6b9a-0000-4000-8000-000000000001"
KID2 = "3f1e6b9a-0000-4000-8000-000000000002"


def route(kind: str, link: str, path: list[Any]) -> dict[str, Any]:
    return {"qsgw_route": {"kind": kind, "link": link, "path": path}}


RELAY = route("trusted_relay", "redu-singapore-relay",
              ["KME_ESEC_REDU", "KME_LUX_DC", "KME_SINGAPORE"])
HUB = route("mdi_hub", "madrid-mdi", ["KME_INTA", "HUB_MQX4000", "KME_SGSICS"])


# -- the pure summary -----------------------------------------------------------------


def test_trusted_relay_names_the_relays() -> None:
    assert key_origin(KID, RELAY) == {
        "key_ID": KID,
        "route": "trusted_relay",
        "link": "redu-singapore-relay",
        "path": ["KME_ESEC_REDU", "KME_LUX_DC", "KME_SINGAPORE"],
        "relays": ["KME_LUX_DC"],
        "hub": None,
    }
    two = route("trusted_relay", "r2", ["A", "R1", "R2", "B"])
    assert key_origin(KID, two)["relays"] == ["R1", "R2"]


def test_mdi_hub_is_a_hub_not_a_relay() -> None:
    s = key_origin(KID, HUB)
    assert s["route"] == "mdi_hub" and s["hub"] == "HUB_MQX4000"
    assert s["relays"] == []  # the hub is untrusted: never listed as a relay
    assert s["path"] == ["KME_INTA", "HUB_MQX4000", "KME_SGSICS"]


def test_point_to_point_and_local_have_no_relays() -> None:
    s = key_origin(KID, route("point_to_point", "redu-lux-fibre", ["KME_ESEC_REDU", "KME_LUX_DC"]))
    assert s == {"key_ID": KID, "route": "point_to_point", "link": "redu-lux-fibre",
                 "path": ["KME_ESEC_REDU", "KME_LUX_DC"], "relays": [], "hub": None}
    s = key_origin(KID, route("local", "local", ["KME_LUX_DC"]))
    assert s["route"] == "local" and s["relays"] == [] and s["hub"] is None


def test_no_extension_gives_the_key_id_only() -> None:
    assert key_origin(KID, None) == {"key_ID": KID}
    assert key_origin(KID, {}) == {"key_ID": KID}
    assert key_origins([KID, KID2], {KID: RELAY})[1] == {"key_ID": KID2}
    assert key_origins([KID], None) == [{"key_ID": KID}]


def test_vendor_extension_is_kept_when_small() -> None:
    ext = {"vendor_x": {"channel": 7, "qber": 0.021}}
    s = key_origin(KID, ext)
    assert s == {"key_ID": KID, "extension": ext}
    assert "route" not in s
    # A copy: changing the KME's object later does not change the record.
    ext["vendor_x"]["channel"] = 8
    assert s["extension"]["vendor_x"]["channel"] == 7
    # Next to a qsgw_route, the other members follow under "extension".
    s = key_origin(KID, {**RELAY, "vendor_x": 1})
    assert s["relays"] == ["KME_LUX_DC"] and s["extension"] == {"vendor_x": 1}


def test_oversize_vendor_extension_is_cut_to_its_size() -> None:
    ext = {"blob": "x" * 2000}
    n = len(json.dumps(ext, sort_keys=True, separators=(",", ":")).encode())
    assert key_origin(KID, ext) == {"key_ID": KID, "extension": {"truncated": True, "bytes": n}}
    # The limit is on the compact JSON: exactly 1024 bytes is kept, 1025 is not.
    pad = 1024 - len(json.dumps({"b": ""}, separators=(",", ":")))
    assert key_origin(KID, {"b": "y" * pad})["extension"] == {"b": "y" * pad}
    assert key_origin(KID, {"b": "y" * (pad + 1)})["extension"]["truncated"] is True


@pytest.mark.parametrize(
    "ext",
    [
        route("trusted_relay", "r", ["A", "B"]),  # a relay with no relay in it
        route("mdi_hub", "h", ["A", "B"]),  # no hub
        route("mdi_hub", "h", ["A", "H1", "H2", "B"]),
        route("point_to_point", "l", ["A", "R", "B"]),
        route("local", "l", ["A", "B"]),
        route("quantum_teleport", "l", ["A", "B"]),  # unknown kind
        route("point_to_point", "l", ["A", 7]),  # not a name
        route("point_to_point", "l", ["A", ""]),
        route("point_to_point", "l", ["A", "B\n"]),  # control character
        route("point_to_point", "l", ["A", "x" * 129]),
        route("trusted_relay", "r", ["N"] * 17),  # too long a path
        route("point_to_point", 5, ["A", "B"]),  # link not a name
        route("point_to_point", "l", "A,B"),  # path not a list
        route("point_to_point", "l", []),
        {"qsgw_route": ["point_to_point", "l", ["A", "B"]]},  # not an object
        {"qsgw_route": None},
        {"qsgw_route": {"kind": ["trusted_relay"], "link": "r", "path": ["A", "R", "B"]}},
        {"qsgw_route": {"link": "l", "path": ["A", "B"]}},  # no kind
    ],
)
def test_malformed_route_is_unrecognised_never_raises(ext: dict[str, Any]) -> None:
    s = key_origin(KID, ext)
    assert s["key_ID"] == KID and s["route"] == "unrecognised"
    assert "relays" not in s and "hub" not in s  # nothing the KME said is trusted as a route
    assert s["extension"] == json.loads(json.dumps(ext))  # kept for the auditor (small)


@pytest.mark.parametrize(
    "ext",
    [
        ["qsgw_route"],  # not an object at all
        "trusted_relay",
        42,
        {1: "non-string member name"},
        {"x": float("nan")},  # no JSON for it
        {"x": object()},
        {"qsgw_route": {"kind": "trusted_relay", "link": "r", "path": ["A", "R", "B"]},
         "x": b"\x00"},  # a good route beside an unserialisable member
    ],
)
def test_strange_objects_never_raise(ext: Any) -> None:
    s = key_origin(KID, ext)
    assert s["key_ID"] == KID
    json.dumps(s, allow_nan=False)  # always fit for the audit trail
    if not isinstance(ext, dict) or 1 in ext:
        assert s["route"] == "unrecognised"


def test_deeply_nested_extension_does_not_raise() -> None:
    deep: Any = {}
    for _ in range(5000):
        deep = {"d": deep}
    s = key_origin(KID, deep)
    assert s["key_ID"] == KID
    json.dumps(s)


def test_describe_origin_lines() -> None:
    line = describe_origin(key_origin(KID, RELAY))
    assert line == (f"key {KID}: trusted_relay link=redu-singapore-relay "
                    "path=KME_ESEC_REDU > KME_LUX_DC > KME_SINGAPORE trusted_relays=KME_LUX_DC")
    assert "untrusted_hub=HUB_MQX4000" in describe_origin(key_origin(KID, HUB))
    assert describe_origin({"key_ID": KID}) == f"key {KID}: no route given by the KME"
    assert "unrecognised" in describe_origin(key_origin(KID, {"qsgw_route": 1}))
    assert 'vendor key_ID_extension={"v":1}' in describe_origin(key_origin(KID, {"v": 1}))
    # An edited audit file cannot put control characters on the terminal.
    evil = {"key_ID": "a\x1b[2Jb", "route": "trusted_relay", "path": ["A\nB"], "relays": "x"}
    assert "\x1b" not in describe_origin(evil) and "\n" not in describe_origin(evil)
    assert describe_origin("junk") == "junk"


# -- the facade, the audit chain and `qsgw audit show` ------------------------------------


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_bytes().splitlines()]


def test_epoch_made_audits_where_each_key_came_from(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    tel = Telemetry("gw-redu", audit=AuditLog(audit))
    events: list[dict[str, Any]] = []

    class Mqtt:  # the facade's only use of the publisher for events
        _on_drop = None

        def publish_event(self, payload: dict[str, Any]) -> None:
            events.append(payload)

    tel.mqtt = Mqtt()  # type: ignore[assignment]
    tel.epoch_made("gw-singapore", 7, "mlkem768+x25519", ["qkd", "mlkem768", "x25519"],
                   [KID, KID2], 0.2, False,
                   qkd_key_extensions={KID: RELAY, KID2: {"qsgw_route": "bogus"}})
    tel.epoch_made("gw-singapore", 8, "mlkem768+x25519", ["mlkem768", "x25519"], [], 0.1, True)
    tel.epoch_made("gw-singapore", 9, "mlkem768+x25519", ["qkd", "mlkem768", "x25519"],
                   [KID], 0.1, False)  # an older caller: no extensions
    assert tel.audit is not None
    tel.audit.flush()
    assert tel.internal_errors == 0

    recs = [r for r in _records(audit) if r["type"] == "epoch"]
    assert [r["epoch"] for r in recs] == [7, 8, 9]
    first = recs[0]
    assert first["qkd_key_ids"] == [KID, KID2]  # kept for compatibility
    assert first["qkd_keys"][0] == key_origin(KID, RELAY)
    assert first["qkd_keys"][0]["relays"] == ["KME_LUX_DC"]
    assert first["qkd_keys"][1]["route"] == "unrecognised"
    assert recs[1]["qkd_keys"] == []
    assert recs[2]["qkd_keys"] == [{"key_ID": KID}]
    assert verify_files([audit]).ok

    ev = [e for e in events if e["event"] == "epoch_made"]
    assert ev[0]["qkd_keys"] == first["qkd_keys"] and ev[0]["qkd_key_ids"] == [KID, KID2]
    tel.audit.close()


def test_audit_show_prints_the_relays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    tel = Telemetry("gw-redu", audit=AuditLog(audit))
    tel.epoch_made("gw-singapore", 7, "mlkem768+x25519", ["qkd", "mlkem768", "x25519"],
                   [KID], 0.2, False, qkd_key_extensions={KID: RELAY})
    tel.epoch_made("gw-madrid", 3, "mlkem768+x25519", ["qkd", "mlkem768", "x25519"],
                   [KID2], 0.2, False, qkd_key_extensions={KID2: HUB})
    assert tel.audit is not None
    tel.audit.close()

    assert qsgw_main(["audit", "show", "--peer", "gw-singapore", str(audit)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert " epoch peer=gw-singapore " in lines[0] and "epoch=7" in lines[0]
    assert "qkd_keys=" not in lines[0]  # not as a JSON blob on the record's line
    assert lines[1] == (f"    key {KID}: trusted_relay link=redu-singapore-relay "
                        "path=KME_ESEC_REDU > KME_LUX_DC > KME_SINGAPORE "
                        "trusted_relays=KME_LUX_DC")

    assert qsgw_main(["audit", "show", str(audit)]) == 0
    out = capsys.readouterr().out
    assert "untrusted_hub=HUB_MQX4000" in out and "trusted_relays=KME_LUX_DC" in out

    assert qsgw_main(["audit", "show", "--json", "--peer", "gw-singapore", str(audit)]) == 0
    (rec,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rec["qkd_keys"] == [key_origin(KID, RELAY)]
    assert rec["qkd_key_ids"] == [KID]
