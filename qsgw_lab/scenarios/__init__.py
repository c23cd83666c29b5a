"""The seed deployments as runnable scenarios: `make demo SCENARIO=<name>` and the
scenario tests. Each has a scenario file (configs/<name>/scenario.yaml, parsed by
`spec`), a module here with its demo timeline, and a test under tests/scenarios/."""

from __future__ import annotations

from pathlib import Path

from qsgw_lab.scenarios.spec import Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# scenario name -> module under qsgw_lab.scenarios with its `demo(run, seconds, say)`
SCENARIOS: dict[str, str] = {
    "benelux-mdi": "benelux_mdi",
    "beqci": "beqci",
    "int-uqkd": "int_uqkd",
    "madqci": "madqci",
}


def scenario_path(name: str) -> Path:
    return CONFIGS / name / "scenario.yaml"


def load(name: str) -> Scenario:
    return load_scenario(scenario_path(name))


__all__ = ["CONFIGS", "SCENARIOS", "Scenario", "load", "load_scenario", "scenario_path"]
