"""Topology files: the seeds load, and mistakes are named with file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kms_client.sim.topology import TopologyError, load_topology, parse_topology

SEEDS = Path(__file__).resolve().parents[2] / "configs" / "topologies"
SEED_NAMES = ["benelux-mdi", "beqci", "int-uqkd", "madqci"]


@pytest.mark.parametrize("name", SEED_NAMES)
def test_seed_topology_loads_with_a_kme_serving_two_saes(name: str) -> None:
    topo = load_topology(SEEDS / f"{name}.yaml")
    assert topo.name == name
    assert any(len(k.saes) >= 2 for k in topo.kmes)
    assert topo.pairs
    for link in topo.links:
        if link.kind != "trusted_relay":
            # Deployed QKD: about 0.1 to 300 kbit/s (short metro links at the top end).
            assert 1 <= link.rate_bps <= 300_000, link.link_id


def test_seed_shapes() -> None:
    benelux = load_topology(SEEDS / "benelux-mdi.yaml")
    assert [lk.kind for lk in benelux.links] == ["mdi_hub"]
    assert benelux.links[0].hub == "HUB_ARLON"
    beqci = load_topology(SEEDS / "beqci.yaml")
    assert [lk.kind for lk in beqci.links] == ["point_to_point"] * 3
    uqkd = load_topology(SEEDS / "int-uqkd.yaml")
    relay = [lk for lk in uqkd.links if lk.kind == "trusted_relay"]
    assert relay and relay[0].kmes[1] == "KME_LUX_DC"
    mad = load_topology(SEEDS / "madqci.yaml")
    assert {k.kme_id for k in mad.kmes} == {"KME_INTA", "KME_SGSICS", "KME_UPM"}
    assert set(mad.sae_kme()) == {"SAE_INTA_GW", "SAE_SGSICS_GW", "SAE_UPM_GW", "SAE_UPM_BACKUP"}


BASE = {
    "name": "t",
    "kmes": [{"id": "A", "saes": ["SA"]}, {"id": "B", "saes": ["SB"]}],
    "links": [
        {
            "id": "ab",
            "kind": "point_to_point",
            "kmes": ["A", "B"],
            "rate_bps": 1,
            "capacity_bits": 4096,
        }
    ],
}


def _with(path: str, value: object) -> dict[str, object]:
    doc = yaml.safe_load(yaml.safe_dump(BASE))
    target = doc
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target[k]
    last = keys[-1]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return doc  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        ("links.0.kmes", ["A", "Z"], "links[0].kmes[1]"),
        ("links.0.kind", "wormhole", "links[0].kind"),
        ("links.0.rate_bps", -5, "links[0].rate_bps"),
        ("links.0.key_size", 100, "links[0].key_size"),
        ("links.0.capacity_bits", 8, "links[0].capacity_bits"),
        ("links.0.colour", "red", "links[0].colour"),
        ("kmes.1.saes", ["SA"], "kmes"),
        ("kmes.0.id", "bad id!", "kmes[0].id"),
        ("kmes.0.port", 70000, "kmes[0].port"),
        ("kmes.0.faults", {"error_rate": 3}, "kmes[0].faults"),
        ("pairs", [["SA", "SA"]], "pairs[0]"),
    ],
)
def test_invalid_topologies_name_the_field(path: str, value: object, where: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(_with(path, value), source="t.yaml")
    assert str(info.value).startswith(f"t.yaml: {where}")


def test_relay_needs_hop_links() -> None:
    doc = _with("kmes", [{"id": x, "saes": [f"S{x}"]} for x in "ABC"])
    doc["links"].append({"id": "r", "kind": "trusted_relay", "path": ["A", "B", "C"]})  # type: ignore[attr-defined]
    with pytest.raises(TopologyError, match=r"links\[1\].path: no earlier link joins B and C"):
        parse_topology(doc)


def test_unreadable_and_broken_yaml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read"):
        load_topology(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nkmes: [\n")
    with pytest.raises(TopologyError, match=r"bad.yaml:\d+: not valid YAML"):
        load_topology(bad)


def test_faults_in_the_topology_apply_at_start() -> None:
    doc = _with("kmes.0.faults", {"latency_s": 0.5, "outage_windows": [[10, 20]]})
    topo = parse_topology(doc)
    fault = topo.kme("A").fault
    assert fault.latency_s == 0.5
    assert fault.in_outage(15) and not fault.in_outage(25)


def test_yaml_exponent_numbers_are_numbers() -> None:
    # PyYAML (YAML 1.1) reads `1e9` as a string; a topology author means a number.
    doc = yaml.safe_load(
        "name: t\nkmes: [{id: A, saes: [SA]}, {id: B, saes: [SB]}]\n"
        "links: [{id: ab, kind: point_to_point, kmes: [A, B], rate_bps: 1e9, capacity_bits: 4e6}]\n"
    )
    link = parse_topology(doc).links[0]
    assert (link.rate_bps, link.capacity_bits) == (1e9, 4_000_000)
    with pytest.raises(TopologyError, match="rate_bps: must be a number"):
        parse_topology(_with("links.0.rate_bps", "fast"))


HUB = {
    "name": "t",
    "kmes": [{"id": x, "saes": [f"S{x}"]} for x in "ABC"],
    "links": [
        {
            "id": "ab",
            "kind": "point_to_point",
            "kmes": ["A", "B"],
            "rate_bps": 1,
            "capacity_bits": 4096,
        },
        {
            "id": "hub",
            "kind": "mdi_hub",
            "hub": "H",
            "ends": ["A", "B", "C"],
            "rate_bps": 6000,
            "capacity_bits": 4096,
        },
        {"id": "abc", "kind": "trusted_relay", "path": ["A", "B", "C"]},
    ],
}


def _link(i: int, **fields: object) -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load(yaml.safe_dump(HUB))
    doc["links"][i].update(fields)  # type: ignore[index]
    return doc


def test_passes_and_shared_parse() -> None:
    topo = parse_topology(
        _link(0, passes={"period_s": 30, "duration_s": 10}),
        source="t.yaml",
    )
    ab = topo.links[0]
    assert ab.passes is not None
    assert (ab.passes.period_s, ab.passes.duration_s, ab.passes.offset_s) == (30, 10, 0)
    assert not ab.shared and topo.links[1].passes is None
    hub = parse_topology(
        _link(1, shared=True, passes={"period_s": 60, "duration_s": 60, "offset_s": 5})
    ).links[1]
    assert hub.shared and hub.passes is not None and hub.passes.offset_s == 5


@pytest.mark.parametrize(
    ("i", "fields", "where", "problem"),
    [
        (
            0,
            {"passes": {"period_s": 0, "duration_s": 1}},
            "links[0].passes.period_s",
            "more than 0",
        ),
        (0, {"passes": {"period_s": 10, "duration_s": 0}}, "links[0].passes.duration_s", "more"),
        (0, {"passes": {"period_s": 10, "duration_s": 11}}, "links[0].passes.duration_s", "exceed"),
        (
            0,
            {"passes": {"period_s": 10, "duration_s": 5, "offset_s": -1}},
            "links[0].passes.offset_s",
            "at least 0",
        ),
        (
            0,
            {"passes": {"period_s": "often", "duration_s": 5}},
            "links[0].passes.period_s",
            "number",
        ),
        (0, {"passes": {"period_s": 10}}, "links[0].passes.duration_s", "required"),
        (
            0,
            {"passes": {"period_s": 10, "duration_s": 5, "phase": 1}},
            "links[0].passes.phase",
            "unknown field",
        ),
        (0, {"passes": [30, 10]}, "links[0].passes", "mapping"),
        (
            0,
            {"passes": {"period_s": float("inf"), "duration_s": 5}},
            "links[0].passes.period_s",
            "at most",
        ),
        (0, {"shared": True}, "links[0].shared", "only an mdi_hub"),
        (1, {"shared": "yes"}, "links[1].shared", "true or false"),
        (2, {"shared": True}, "links[2].shared", "trusted_relay"),
        (2, {"passes": {"period_s": 10, "duration_s": 5}}, "links[2].passes", "trusted_relay"),
    ],
)
def test_bad_passes_and_shared_name_file_and_field(
    i: int, fields: dict[str, object], where: str, problem: str
) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(_link(i, **fields), source="t.yaml")
    msg = str(info.value)
    assert msg.startswith(f"t.yaml: {where}: "), msg
    assert problem in msg, msg


def test_seed_satellite_link_has_a_compressed_pass_schedule_and_madqci_hub_is_shared() -> None:
    uqkd = {lk.link_id: lk for lk in load_topology(SEEDS / "int-uqkd.yaml").links}
    sat = uqkd["lux-singapore-sat"].passes
    assert sat is not None and (sat.period_s, sat.duration_s, sat.offset_s) == (30, 10, 0)
    assert uqkd["redu-lux-fibre"].passes is None
    mad = load_topology(SEEDS / "madqci.yaml").links[0]
    assert mad.shared and mad.rate_bps == 6000
