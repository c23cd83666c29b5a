"""Scenario files and the scenario-wide key-reuse check (pure: no namespaces)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError
from qsgw_lab.scenarios import SCENARIOS, load, scenario_path
from qsgw_lab.scenarios.checks import ConsumedKey, key_reuse_problems
from qsgw_lab.scenarios.spec import load_scenario

TOPOLOGIES = Path(__file__).resolve().parents[2] / "configs" / "topologies"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_seed_deployment_has_a_valid_scenario(name: str) -> None:
    if not scenario_path(name).exists():
        pytest.fail(f"configs/{name}/scenario.yaml is missing")
    scenario = load(name)
    assert scenario.name == name
    assert scenario.topology.name == name
    # Every site's gateway runs in a tunnel, and every tunnel's pair has a key route.
    in_tunnels = {n for t in scenario.tunnels for n in t.between}
    assert in_tunnels == {s.name for s in scenario.sites}


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "scenario.yaml"
    p.write_text(f"name: t\ntitle: t\ntopology: {TOPOLOGIES / 'beqci.yaml'}\n{body}")
    return p


def test_an_unknown_sae_names_file_line_and_field(tmp_path: Path) -> None:
    p = _write(tmp_path, "sites:\n"
                         "  - {name: a, gateway: gw-a, sae: SAE_UGENT_A_GW}\n"
                         "  - {name: b, gateway: gw-b, sae: SAE_NOWHERE}\n"
                         "tunnels:\n  - {between: [a, b]}\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(p)
    text = str(err.value)
    assert f"{p}:6:" in text and "sites[1].sae" in text and "SAE_NOWHERE" in text


def test_a_tunnel_without_a_qkd_route_is_refused(tmp_path: Path) -> None:
    # Ghent campus A and Redu share no QKD link in BeQCI.
    p = _write(tmp_path, "sites:\n"
                         "  - {name: a, gateway: gw-a, sae: SAE_UGENT_A_GW}\n"
                         "  - {name: b, gateway: gw-b, sae: SAE_REDU_GW}\n"
                         "tunnels:\n  - {between: [a, b], kind: wireguard}\n")
    with pytest.raises(ConfigError, match=r"tunnels\[0\]\.between: no QKD route joins"):
        load_scenario(p)


def test_unknown_keys_and_bad_values_are_each_reported(tmp_path: Path) -> None:
    p = _write(tmp_path, "sites:\n"
                         "  - {name: A, gateway: gw-a, sae: SAE_UGENT_A_GW}\n"
                         "  - {name: b, gateway: gw-b, sae: SAE_UGENT_B_GW, colour: red}\n"
                         "tunnels:\n  - {between: [A, b], policy: sometimes}\n")
    with pytest.raises(ConfigError) as err:
        load_scenario(p)
    text = str(err.value)
    assert "sites[0].name" in text and "colour" in text and "tunnels[0].policy" in text


def _k(gw: str, key: str, peer: str, epoch: int | None) -> ConsumedKey:
    return ConsumedKey(gw, key, peer, epoch)


def test_a_key_used_by_both_ends_of_one_epoch_is_fine() -> None:
    journals = {"a": [_k("a", "k1", "b", 3)], "b": [_k("b", "k1", "a", 3)]}
    assert key_reuse_problems(journals, {"SAE_A": ["k1"], "SAE_B": ["k1"]}) == []


@pytest.mark.parametrize(("journals", "delivered", "needle"), [
    ({"a": [_k("a", "k1", "b", 3)], "b": [_k("b", "k1", "a", 4)]},
     {"S": ["k1"]}, "epochs 3 and 4"),
    ({"a": [_k("a", "k1", "b", 3)], "c": [_k("c", "k1", "d", 3)]},
     {"S": ["k1"]}, "two tunnels"),
    ({"a": [_k("a", "k1", "b", 1)], "b": [_k("b", "k1", "a", 1)], "c": [_k("c", "k1", "a", 1)]},
     {"S": ["k1"]}, "3 times"),
    ({"a": [_k("a", "k1", "b", 1)]}, {"S": ["k1", "k1"]}, "delivered 2 times"),
    ({"a": [_k("a", "k9", "b", 1)]}, {"S": ["k1"]}, "never delivered"),
])
def test_every_kind_of_reuse_is_reported(journals: dict[str, list[ConsumedKey]],
                                         delivered: dict[str, list[str]], needle: str) -> None:
    problems = key_reuse_problems(journals, delivered)
    assert any(needle in p for p in problems), problems
