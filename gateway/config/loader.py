"""Loading the config: YAML text or a file -> a validated `GatewayConfig`, or `ConfigError`."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from gateway.config.checks import _cross_checks
from gateway.config.errors import ConfigError, ConfigIssue, issues_from
from gateway.config.models_gateway import GatewayConfig
from gateway.config.peerfiles import PeerFile, load_peer_files
from gateway.config.yamlloc import compose, issue_at


def parse_config(
    text: str, file: str = "<config>", *, base_dir: Path | None = None, check_files: bool = True
) -> GatewayConfig:
    """Validate YAML text; `file` names it in errors, `base_dir` anchors relative paths."""
    data, located, issues = compose(text, file)
    if data is None:
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    1,
                    "",
                    "the config is empty; it needs at least the gateway: and kme: sections",
                    1,
                )
            ]
        )
    if not isinstance(data, dict):
        raise ConfigError(
            [
                issue_at(
                    located,
                    file,
                    (),
                    "the config must be a mapping with the "
                    "sections gateway, control, kme, peers, telemetry",
                )
            ]
        )
    context = {"base_dir": base_dir, "check_files": check_files}
    files: list[PeerFile] = []
    inline = data.get("peers", ())
    if "peers_dir" in data:
        if inline is None:  # `peers:` left empty next to peers_dir: no inline peers
            inline = data["peers"] = ()
        files, found = _peers_dir(data.pop("peers_dir"), located, file, base_dir, context)
        issues.extend(found)
        if files and isinstance(inline, tuple):
            data["peers"] = inline + tuple(pf.raw for pf in files)  # for the cross checks
    n_inline = len(inline) if isinstance(inline, tuple) else 0
    for loc, msg in _cross_checks(data):
        if len(loc) > 1 and loc[0] == "peers" and isinstance(loc[1], int) and loc[1] >= n_inline:
            issues.append(files[loc[1] - n_inline].issue(loc[2:], msg))
        else:
            issues.append(issue_at(located, file, loc, msg))
    if files and isinstance(inline, tuple):
        # A peer file's own problems are reported already; the valid ones go in as
        # models, which pydantic takes as they are (no second validation).
        data["peers"] = inline + tuple(pf.peer for pf in files if pf.peer is not None)
    try:
        cfg = GatewayConfig.model_validate(data, context=context)
    except ValidationError as exc:
        issues.extend(issues_from(exc, located, file))
        raise ConfigError(_sorted(issues, file)) from None
    if issues:
        raise ConfigError(_sorted(issues, file))
    return cfg


def _peers_dir(value: Any, located: Any, file: str, base_dir: Path | None,
               context: dict[str, Any]) -> tuple[list[PeerFile], list[ConfigIssue]]:
    if not isinstance(value, str) or not value:
        return [], [issue_at(located, file, ("peers_dir",),
                             "must be a directory path: one peer per *.yaml file in it")]
    directory = Path(value)
    if not directory.is_absolute() and base_dir is not None:
        directory = base_dir / directory
    if not directory.is_dir():
        return [], [issue_at(located, file, ("peers_dir",),
                             f"{directory} is not a directory (one peer per *.yaml file)")]
    return load_peer_files(directory, context)


def _sorted(issues: list[ConfigIssue], file: str) -> list[ConfigIssue]:
    # The main file's issues first, then each peer file's, each in line order.
    return sorted(issues, key=lambda i: (i.file != file, i.file, i.line, i.column, i.field))


def load_config(path: str | os.PathLike[str], *, check_files: bool = True) -> GatewayConfig:
    """Load and validate the gateway config at `path`; raises `ConfigError` listing every problem.

    `check_files=False` skips the checks that files exist and have safe modes (for
    configs whose files are made later); paths are still resolved.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(str(p), 0, "", "config file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(
            [ConfigIssue(str(p), 0, "", f"cannot read the config: {reason}")]
        ) from None
    # The collector off while the config is composed and validated: it would walk the
    # whole heap (a running daemon's 10,000 sessions) every few hundred of the hundreds
    # of thousands of nodes a large config makes, half of the load time and more.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return parse_config(text, str(p), base_dir=p.resolve().parent, check_files=check_files)
    finally:
        if collecting:
            gc.enable()
