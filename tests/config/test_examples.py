"""The example configs in configs/ are valid, complete and match the simulator topologies."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gateway.config import GatewayConfig, load_config

from .conftest import write_secret

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# One directory per seed deployment: its site configs and its scenario.yaml.
EXAMPLES = sorted(p for p in CONFIGS.glob("*/*.yaml")
                  if p.parent.name != "topologies" and p.name != "scenario.yaml")


def test_the_seed_deployments_have_examples() -> None:
    names = {f"{p.parent.name}/{p.name}" for p in EXAMPLES}
    assert {
        "madqci/inta.yaml",
        "beqci/ghent-a.yaml",
        "benelux-mdi/kirchberg.yaml",
        "int-uqkd/redu.yaml",
    } <= names
    assert len([n for n in names if n.startswith("madqci/")]) >= 2


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_is_valid_without_its_files(example: Path) -> None:
    cfg = load_config(example, check_files=False)
    assert cfg.peers


def _materialise(cfg: GatewayConfig, root: Path) -> None:
    """Create every file and identity directory the config names, as `qsgw keygen` would."""

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                walk(value)
            elif isinstance(value, tuple):
                for item in value:
                    if isinstance(item, BaseModel):
                        walk(item)
            elif isinstance(value, Path) and value.is_relative_to(root):
                if name == "identity_dir":
                    for key in ("ed25519.key", "mldsa65.key"):
                        write_secret(value / key)
                elif name.endswith("_file"):
                    write_secret(value)  # 0600 suits certificates too

    walk(cfg)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_is_valid_with_its_files_in_place(example: Path, tmp_path: Path) -> None:
    # The examples point at /etc/qsgw/...; private keys are not committed, so
    # move those paths under tmp_path and make the files there.
    text = example.read_text().replace("/etc/qsgw/", f"{tmp_path}/etc/qsgw/")
    copy = tmp_path / example.name
    copy.write_text(text)
    _materialise(load_config(copy, check_files=False), tmp_path)
    cfg = load_config(copy)
    assert cfg == load_config(copy, check_files=False)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_ids_exist_in_its_topology(example: Path) -> None:
    topology_path = CONFIGS / "topologies" / f"{example.parent.name}.yaml"
    assert topology_path.exists(), f"{example} has no topology {topology_path.name}"
    topology = yaml.safe_load(topology_path.read_text())
    kmes = {k["id"]: set(k.get("saes", ())) for k in topology["kmes"] if "saes" in k}
    saes = set().union(*kmes.values())
    cfg = load_config(example, check_files=False)
    for endpoint in cfg.kme.endpoints:
        assert cfg.kme.sae_id in kmes[endpoint.kme_id], (endpoint.kme_id, cfg.kme.sae_id)
    for peer in cfg.peers:
        assert peer.sae_id in saes, peer.sae_id


def _field_names(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for field in model.model_fields.values():
        stack: list[typing.Any] = [field.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                names |= _field_names(t, seen)
            stack.extend(typing.get_args(t))
    return names


def test_every_field_is_shown_with_a_comment_in_an_example() -> None:
    commented: set[str] = set()
    for example in EXAMPLES:
        for line in example.read_text().splitlines():
            if "#" in line:
                commented.update(re.findall(r"(\w+):", line))
    missing = _field_names(GatewayConfig, set()) - commented
    assert not missing, f"fields without a commented example: {sorted(missing)}"


def test_readme_explains_the_file_checks() -> None:
    readme = (CONFIGS / "README.md").read_text()
    assert "--no-file-checks" in readme
    for example in EXAMPLES:
        assert f"{example.parent.name}/{example.name}" in readme
