"""Topology files: KMEs, their SAEs and the QKD links between them (YAML -> typed, validated).

A topology names KMEs (each serving one or more SAEs) and links of three kinds:

- ``point_to_point``: one QKD link between two KMEs.
- ``mdi_hub``: an MDI-QKD hub (untrusted central node) that gives every pair of its
  end KMEs its own pairwise key stream; the hub never learns the keys. With
  ``shared: true`` the pairs time-share the hub: one pool, the hub's whole rate.
- ``trusted_relay``: keys forwarded hop by hop along a path of existing links; every
  hop's pool pays for the key, and the path is visible in the key_ID_extension.

A point_to_point or mdi_hub link may have ``passes: {period_s, duration_s, offset_s}``
(a satellite link): it makes key only during passes; stored key stays usable between.

Errors name the file and the field path and say what is allowed.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kms_client.sim.faults import Fault, FaultError, parse_fault
from kms_client.sim.passes import PassSchedule

_EXP_RE = re.compile(r"^[0-9]+(\.[0-9]*)?[eE][+-]?[0-9]+$")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

LinkKind = Literal["point_to_point", "mdi_hub", "trusted_relay"]
LINK_KINDS: tuple[str, ...] = ("point_to_point", "mdi_hub", "trusted_relay")


class TopologyError(ValueError):
    """A topology file is missing, unreadable or invalid; the message names file and field."""


@dataclass(frozen=True)
class KeyParams:
    """The ETSI 014 status limits of a key stream."""

    key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 1024
    max_key_per_request: int = 128
    max_sae_id_count: int = 2


@dataclass(frozen=True)
class KmeSpec:
    kme_id: str
    saes: tuple[str, ...]
    port: int | None = None
    # Keys for two SAEs of the same KME come from the KME's own random source.
    local_rate_bps: float = 1_000_000.0
    local_capacity_bits: int = 10_000_000
    fault: Fault = field(default_factory=Fault)


@dataclass(frozen=True)
class LinkSpec:
    link_id: str
    kind: LinkKind
    # point_to_point: the two KMEs; mdi_hub: the end KMEs; trusted_relay: the hop path.
    kmes: tuple[str, ...]
    hub: str | None = None
    rate_bps: float = 0.0  # secret key rate, per pair of end nodes for an unshared hub
    capacity_bits: int = 0
    initial_fill: float = 1.0
    params: KeyParams = field(default_factory=KeyParams)
    passes: PassSchedule | None = None  # None: always up
    shared: bool = False  # mdi_hub only: one pool for every pair of end nodes


@dataclass(frozen=True)
class Topology:
    name: str
    kmes: tuple[KmeSpec, ...]
    links: tuple[LinkSpec, ...]
    pairs: tuple[tuple[str, str], ...]  # (master SAE, slave SAE)
    defaults: KeyParams = field(default_factory=KeyParams)

    def kme(self, kme_id: str) -> KmeSpec:
        for k in self.kmes:
            if k.kme_id == kme_id:
                return k
        raise KeyError(kme_id)

    def sae_kme(self) -> dict[str, str]:
        return {sae: k.kme_id for k in self.kmes for sae in k.saes}


def load_topology(path: Path | str) -> Topology:
    """Read and validate a topology YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(f"{p}: cannot read topology file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise TopologyError(f"{p}{where}: not valid YAML") from None
    return parse_topology(data, source=str(p))


def parse_topology(data: object, source: str = "<topology>") -> Topology:
    """Validate an already parsed topology document."""
    return _Parser(source).topology(data)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> TopologyError:
        return TopologyError(f"{self.source}: {where}: {problem}")

    def mapping(self, value: object, where: str, allowed: Sequence[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, "must be a mapping")
        for key in value:
            if key not in allowed:
                raise self.fail(
                    f"{where}.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}"
                )
        return value

    def ident(self, value: object, where: str) -> str:
        if not isinstance(value, str) or not ID_RE.match(value):
            raise self.fail(where, "must be an ID of letters, digits, '_', '.', '-' (1-64)")
        return value

    def number(self, value: object, where: str, minimum: float, integer: bool) -> float:
        if isinstance(value, str) and _EXP_RE.match(value):
            # YAML 1.1 (PyYAML) reads 1e9 without a dot or sign as a string.
            value = float(value)
            if integer and value.is_integer():
                value = int(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, "must be a number")
        if integer and not isinstance(value, int):
            raise self.fail(where, "must be an integer")
        if value < minimum:
            raise self.fail(where, f"must be at least {minimum:g}")
        return float(value)

    def params(self, value: Mapping[str, Any], where: str, base: KeyParams) -> KeyParams:
        names = {
            "key_size": "key_size",
            "min_key_size": "min_key_size",
            "max_key_size": "max_key_size",
            "max_key_per_request": "max_key_per_request",
            "max_SAE_ID_count": "max_sae_id_count",
        }
        got: dict[str, int] = {}
        for yaml_name, attr in names.items():
            if yaml_name in value:
                minimum = 0 if attr == "max_sae_id_count" else 1
                got[attr] = int(
                    self.number(value[yaml_name], f"{where}.{yaml_name}", minimum, True)
                )
        params = KeyParams(**{**base.__dict__, **got})
        for attr in ("key_size", "min_key_size", "max_key_size"):
            if getattr(params, attr) % 8:
                raise self.fail(f"{where}.{attr}", "must be a multiple of 8")
        if not params.min_key_size <= params.key_size <= params.max_key_size:
            raise self.fail(where, "needs min_key_size <= key_size <= max_key_size")
        return params

    def topology(self, data: object) -> Topology:
        top = self.mapping(
            data, "topology", ("name", "description", "defaults", "kmes", "links", "pairs")
        )
        name = self.ident(top.get("name"), "name")
        defaults = KeyParams()
        if "defaults" in top:
            d = self.mapping(
                top["defaults"],
                "defaults",
                (
                    "key_size",
                    "min_key_size",
                    "max_key_size",
                    "max_key_per_request",
                    "max_SAE_ID_count",
                ),
            )
            defaults = self.params(d, "defaults", defaults)
        kmes_raw = top.get("kmes")
        if not isinstance(kmes_raw, list) or not kmes_raw:
            raise self.fail("kmes", "must be a non-empty list of KMEs")
        kmes = tuple(self.kme(k, f"kmes[{i}]") for i, k in enumerate(kmes_raw))
        kme_ids = [k.kme_id for k in kmes]
        if len(set(kme_ids)) != len(kme_ids):
            raise self.fail("kmes", "KME IDs must be unique")
        saes = [s for k in kmes for s in k.saes]
        if len(set(saes)) != len(saes):
            raise self.fail("kmes", "an SAE ID may belong to one KME only")
        ports = [k.port for k in kmes if k.port]
        if len(set(ports)) != len(ports):
            raise self.fail("kmes", "ports must be unique")
        links_raw = top.get("links", [])
        if not isinstance(links_raw, list):
            raise self.fail("links", "must be a list")
        links: list[LinkSpec] = []
        for i, raw in enumerate(links_raw):
            links.append(self.link(raw, f"links[{i}]", set(kme_ids), defaults, links))
        if len({lk.link_id for lk in links}) != len(links):
            raise self.fail("links", "link IDs must be unique")
        sae_kme = {s: k.kme_id for k in kmes for s in k.saes}
        if "pairs" in top:
            pairs = self.pairs(top["pairs"], sae_kme, links)
        else:
            pairs = derive_pairs(kmes, links)
        return Topology(name=name, kmes=kmes, links=tuple(links), pairs=pairs, defaults=defaults)

    def kme(self, raw: object, where: str) -> KmeSpec:
        k = self.mapping(
            raw,
            where,
            ("id", "port", "saes", "local_rate_bps", "local_capacity_bits", "faults", "site"),
        )
        kme_id = self.ident(k.get("id"), f"{where}.id")
        saes_raw = k.get("saes")
        if not isinstance(saes_raw, list) or not saes_raw:
            raise self.fail(f"{where}.saes", "must be a non-empty list of SAE IDs")
        saes = tuple(self.ident(s, f"{where}.saes[{j}]") for j, s in enumerate(saes_raw))
        port: int | None = None
        if k.get("port") is not None:
            port = int(self.number(k["port"], f"{where}.port", 1, True))
            if port > 65535:
                raise self.fail(f"{where}.port", "must be at most 65535")
        rate = self.number(k.get("local_rate_bps", 1_000_000), f"{where}.local_rate_bps", 0, False)
        cap = int(
            self.number(
                k.get("local_capacity_bits", 10_000_000), f"{where}.local_capacity_bits", 0, True
            )
        )
        fault = Fault()
        if "faults" in k:
            try:
                fault = parse_fault(k["faults"])
            except FaultError as exc:
                raise self.fail(f"{where}.faults", str(exc)) from None
        return KmeSpec(kme_id, saes, port, rate, cap, fault)

    def link(
        self,
        raw: object,
        where: str,
        kme_ids: set[str],
        defaults: KeyParams,
        earlier: list[LinkSpec],
    ) -> LinkSpec:
        allowed = (
            "id",
            "kind",
            "kmes",
            "hub",
            "ends",
            "path",
            "rate_bps",
            "capacity_bits",
            "initial_fill",
            "passes",
            "shared",
            "distance_km",
            "medium",
            "key_size",
            "min_key_size",
            "max_key_size",
            "max_key_per_request",
            "max_SAE_ID_count",
        )
        lk = self.mapping(raw, where, allowed)
        link_id = self.ident(lk.get("id"), f"{where}.id")
        kind = lk.get("kind")
        if kind not in LINK_KINDS:
            raise self.fail(f"{where}.kind", f"must be one of {', '.join(LINK_KINDS)}")
        params = self.params(lk, where, defaults)
        members_field = {"point_to_point": "kmes", "mdi_hub": "ends", "trusted_relay": "path"}[kind]
        members_raw = lk.get(members_field)
        if not isinstance(members_raw, list):
            raise self.fail(f"{where}.{members_field}", "must be a list of KME IDs")
        members = tuple(
            self.ident(m, f"{where}.{members_field}[{j}]") for j, m in enumerate(members_raw)
        )
        for j, m in enumerate(members):
            if m not in kme_ids:
                raise self.fail(f"{where}.{members_field}[{j}]", f"unknown KME {m!r}")
        if len(set(members)) != len(members):
            raise self.fail(f"{where}.{members_field}", "KMEs must not repeat")
        if kind == "point_to_point" and len(members) != 2:
            raise self.fail(f"{where}.kmes", "a point-to-point link joins exactly two KMEs")
        if kind in ("mdi_hub", "trusted_relay") and len(members) < (2 if kind == "mdi_hub" else 3):
            raise self.fail(f"{where}.{members_field}", "too few KMEs for this kind of link")
        hub = None
        if kind == "mdi_hub":
            hub = self.ident(lk.get("hub"), f"{where}.hub")
        if kind == "trusted_relay":
            for name in ("passes", "shared"):
                if name in lk:
                    raise self.fail(
                        f"{where}.{name}", "not for a trusted_relay (set it on the hop's link)"
                    )
            for a, b in itertools.pairwise(members):
                if not any(_joins(e, a, b) for e in earlier):
                    raise self.fail(
                        f"{where}.path",
                        f"no earlier link joins {a} and {b} (define hop links first)",
                    )
            return LinkSpec(link_id, "trusted_relay", members, params=params)
        rate = self.number(lk.get("rate_bps"), f"{where}.rate_bps", 0, False)
        cap = int(self.number(lk.get("capacity_bits"), f"{where}.capacity_bits", 1, True))
        fill = self.number(lk.get("initial_fill", 1.0), f"{where}.initial_fill", 0, False)
        if fill > 1:
            raise self.fail(f"{where}.initial_fill", "must be between 0 and 1")
        if cap < params.max_key_size:
            raise self.fail(f"{where}.capacity_bits", "must hold at least one key of max_key_size")
        passes = self.passes(lk["passes"], f"{where}.passes") if "passes" in lk else None
        shared = lk.get("shared", False)
        if not isinstance(shared, bool):
            raise self.fail(f"{where}.shared", "must be true or false")
        if shared and kind != "mdi_hub":
            raise self.fail(f"{where}.shared", "only an mdi_hub link can be shared")
        return LinkSpec(link_id, kind, members, hub, rate, cap, fill, params, passes, shared)

    def passes(self, raw: object, where: str) -> PassSchedule:
        p = self.mapping(raw, where, ("period_s", "duration_s", "offset_s"))
        for name in ("period_s", "duration_s"):
            if name not in p:
                raise self.fail(f"{where}.{name}", "is required (seconds, more than 0)")
        period = self.number(p["period_s"], f"{where}.period_s", 0, False)
        duration = self.number(p["duration_s"], f"{where}.duration_s", 0, False)
        offset = self.number(p.get("offset_s", 0), f"{where}.offset_s", 0, False)
        for name, value in (("period_s", period), ("duration_s", duration), ("offset_s", offset)):
            if not math.isfinite(value) or value > 1e9:
                raise self.fail(f"{where}.{name}", "must be at most 1e9 seconds")
            if value == 0 and name != "offset_s":
                raise self.fail(f"{where}.{name}", "must be more than 0")
        if duration > period:
            raise self.fail(f"{where}.duration_s", "must not exceed period_s")
        return PassSchedule(period, duration, offset)

    def pairs(
        self, raw: object, sae_kme: dict[str, str], links: list[LinkSpec]
    ) -> tuple[tuple[str, str], ...]:
        if not isinstance(raw, list):
            raise self.fail("pairs", "must be a list of [master SAE, slave SAE]")
        out: list[tuple[str, str]] = []
        for i, p in enumerate(raw):
            if not (isinstance(p, list) and len(p) == 2):
                raise self.fail(f"pairs[{i}]", "must be [master SAE, slave SAE]")
            m, s = (self.ident(x, f"pairs[{i}]") for x in p)
            for x in (m, s):
                if x not in sae_kme:
                    raise self.fail(f"pairs[{i}]", f"unknown SAE {x!r}")
            if m == s:
                raise self.fail(f"pairs[{i}]", "master and slave must differ")
            a, b = sae_kme[m], sae_kme[s]
            if a != b and not any(_joins(e, a, b) for e in links):
                raise self.fail(f"pairs[{i}]", f"no link joins {a} and {b}")
            out.append((m, s))
        return tuple(out)


def _joins(link: LinkSpec, a: str, b: str) -> bool:
    """Whether the link gives keys shared between KMEs a and b."""
    if link.kind == "trusted_relay":
        return {link.kmes[0], link.kmes[-1]} == {a, b}
    return a in link.kmes and b in link.kmes


def derive_pairs(kmes: Sequence[KmeSpec], links: Sequence[LinkSpec]) -> tuple[tuple[str, str], ...]:
    """Every SAE pair that can share keys; the lower SAE ID is master (the daemon's default)."""
    sae_kme = {s: k.kme_id for k in kmes for s in k.saes}
    out: list[tuple[str, str]] = []
    for m, s in itertools.combinations(sorted(sae_kme), 2):
        a, b = sae_kme[m], sae_kme[s]
        if a == b or any(_joins(e, a, b) for e in links):
            out.append((m, s))
    return tuple(out)
