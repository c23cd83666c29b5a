"""Peers in a directory (`peers_dir`), one file each, read again on reload only when changed.

A hub with thousands of peers keeps them as `peers.d/<name>.yaml`, each one peer
mapping as it would appear under `peers:`. A file whose inode, size, mtime and
ctime are those of the last load is not read again: its validated PeerConfig is
reused, so a SIGHUP that adds one peer composes and validates one file, not
thirty megabytes of YAML. Relative paths in a peer file resolve against the main
config's directory, as for the peers listed inline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.errors import ConfigIssue, issues_from
from gateway.config.models_peer import PeerConfig
from gateway.config.yamlloc import Located, compose, issue_at

SUFFIX = ".yaml"
# Entries for files no longer listed are dropped on each load; this bounds the rest.
MAX_CACHED = 200_000


@dataclass(frozen=True)
class PeerFile:
    path: Path
    raw: Any  # the composed mapping, for the cross checks
    located: Located
    peer: PeerConfig | None  # None: the file has issues (reported with the others)

    def issue(self, loc: tuple[str | int, ...], msg: str) -> ConfigIssue:
        return issue_at(self.located, str(self.path), loc, msg)


_Stamp = tuple[int, int, int, int]
_cache: dict[tuple[str, str, bool], tuple[_Stamp, PeerFile]] = {}


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def load_peer_files(directory: Path, context: dict[str, Any]
                    ) -> tuple[list[PeerFile], list[ConfigIssue]]:
    """Every `*.yaml` in `directory`, in name order, with the issues found in them."""
    names = sorted(e.name for e in os.scandir(directory)
                   if e.name.endswith(SUFFIX) and not e.name.startswith(".") and e.is_file())
    key_ctx = (str(context.get("base_dir")), bool(context.get("check_files", True)))
    files: list[PeerFile] = []
    issues: list[ConfigIssue] = []
    seen: set[tuple[str, str, bool]] = set()
    prefix = f"{directory}/"
    for name in names:
        text_path = prefix + name  # a Path per file only when it is read: 10,000 per reload
        key = (text_path, *key_ctx)
        seen.add(key)
        try:
            stamp = _stamp(os.stat(text_path))
        except OSError as exc:
            issues.append(ConfigIssue(text_path, 0, "", f"cannot read the peer file: "
                                      f"{exc.strerror or exc}"))
            continue
        cached = _cache.get(key)
        if cached is not None and cached[0] == stamp:
            files.append(cached[1])
            continue
        path = directory / name
        pf, found = _read(path, context)
        issues.extend(found)
        if pf is None:
            continue
        files.append(pf)
        if pf.peer is not None and len(_cache) < MAX_CACHED:
            _cache[key] = (stamp, pf)
    for gone in [k for k in _cache if k[1:] == key_ctx and k[0].startswith(f"{directory}/")
                 and k not in seen]:
        del _cache[gone]
    return files, issues


def _read(path: Path, context: dict[str, Any]) -> tuple[PeerFile | None, list[ConfigIssue]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return None, [ConfigIssue(str(path), 0, "", f"cannot read the peer file: {why}")]
    data, located, issues = compose(text, str(path))  # raises ConfigError on bad YAML
    if not isinstance(data, dict):
        return None, [*issues, issue_at(located, str(path), (), (
            "a peer file holds one peer: a mapping with id, sae_id, control, identity "
            "and tunnel, as one entry under peers: would"))]
    try:
        peer: PeerConfig | None = PeerConfig.model_validate(data, context=context)
    except ValidationError as exc:
        issues.extend(issues_from(exc, located, str(path)))
        peer = None
    return PeerFile(path, data, located, None if issues else peer), issues
