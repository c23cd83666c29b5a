"""Scenario files (configs/<name>/scenario.yaml): which sites of a seed deployment run,
which SAE each gateway is, and which tunnels join them, with what policy.

Pure: parsing and validation only. Errors name the file, line and field like the
gateway config's (they share its YAML locator), and the cross-checks against the
topology (an SAE the topology lacks, a pair no QKD link joins) name the field too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import ConfigError, ConfigIssue
from gateway.config.errors import issues_from
from gateway.config.yamlloc import compose, issue_at
from kms_client.sim.topology import Topology, TopologyError, load_topology

SITE_NAME = r"^[a-z][a-z0-9]{0,11}$"  # a namespace stem, short enough for interface names


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SiteSpec(_Model):
    name: Annotated[str, Field(pattern=SITE_NAME)]
    gateway: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
    sae: str
    role: str = ""  # what the site is, for the demo's narration
    # `later`: not started with the others; the scenario adds it to the running
    # network (a new end node; the others take it in on SIGHUP).
    start: Literal["at_once", "later"] = "at_once"


class TunnelSpec(_Model):
    between: tuple[str, str]
    kind: Literal["wireguard", "ipsec"] = "wireguard"
    policy: Literal["required", "preferred", "off"] = "required"
    rekey_interval_s: Annotated[float, Field(gt=0)] | None = None
    key_lifetime_s: Annotated[float, Field(gt=0)] | None = None


class _ScenarioFile(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,32}$")]
    title: str
    topology: str  # relative to the scenario file
    rekey_interval_s: Annotated[float, Field(gt=0)] = 4.0
    key_lifetime_s: Annotated[float, Field(gt=0)] = 10.0
    demo_seconds: Annotated[float, Field(gt=0)] = 90.0
    sites: Annotated[tuple[SiteSpec, ...], Field(min_length=2)]
    tunnels: Annotated[tuple[TunnelSpec, ...], Field(min_length=1)]


@dataclass(frozen=True)
class Scenario:
    """A validated scenario, its topology loaded."""

    name: str
    title: str
    path: Path
    topology_path: Path
    topology: Topology
    rekey_interval_s: float
    key_lifetime_s: float
    demo_seconds: float
    sites: tuple[SiteSpec, ...]
    tunnels: tuple[TunnelSpec, ...]

    def site(self, name: str) -> SiteSpec:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def kme_of(self, site: SiteSpec) -> str:
        return self.topology.sae_kme()[site.sae]

    def tunnels_of(self, site_name: str) -> tuple[TunnelSpec, ...]:
        return tuple(t for t in self.tunnels if site_name in t.between)


def load_scenario(path: Path | str) -> Scenario:
    p = Path(path)
    file = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(file, 0, "", f"cannot read: {exc.strerror}", 0)]) from None
    data, located, issues = compose(text, file)
    if issues:
        raise ConfigError(issues)
    try:
        doc = _ScenarioFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(issues_from(exc, located, file)) from None
    topo_path = (p.parent / doc.topology).resolve()
    try:
        topology = load_topology(topo_path)
    except TopologyError as exc:
        raise ConfigError([issue_at(located, file, ("topology",), str(exc))]) from None
    problems: list[ConfigIssue] = []
    sae_kme = topology.sae_kme()
    names: set[str] = set()
    for i, s in enumerate(doc.sites):
        if s.name in names:
            problems.append(issue_at(located, file, ("sites", i, "name"),
                                      f"site {s.name!r} appears twice"))
        names.add(s.name)
        if s.sae not in sae_kme:
            problems.append(issue_at(located, file, ("sites", i, "sae"),
                                      f"SAE {s.sae!r} is not in topology {topology.name}"))
    if len({s.gateway for s in doc.sites}) != len(doc.sites):
        problems.append(issue_at(located, file, ("sites",), "gateway IDs must be unique"))
    pairs = {frozenset(pair) for pair in topology.pairs}
    seen: set[frozenset[str]] = set()
    for i, t in enumerate(doc.tunnels):
        a, b = t.between
        where = ("tunnels", i, "between")
        if a == b or a not in names or b not in names:
            problems.append(issue_at(located, file, where,
                                      "must name two different sites of this scenario"))
            continue
        if frozenset(t.between) in seen:
            problems.append(issue_at(located, file, where, "a second tunnel for this pair"))
        seen.add(frozenset(t.between))
        saes = frozenset((doc_site(doc, a).sae, doc_site(doc, b).sae))
        if saes not in pairs:
            problems.append(issue_at(located, file, where,
                                      f"no QKD route joins {' and '.join(sorted(saes))}"))
    if problems:
        raise ConfigError(problems)
    return Scenario(doc.name, doc.title, p, topo_path, topology, doc.rekey_interval_s,
                    doc.key_lifetime_s, doc.demo_seconds, doc.sites, doc.tunnels)


def doc_site(doc: _ScenarioFile, name: str) -> SiteSpec:
    return next(s for s in doc.sites if s.name == name)
