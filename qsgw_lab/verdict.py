"""What a demo or scenario must show before it exits 0: traffic through every tunnel, no key reuse.

Shared by `make demo` and `make demo SCENARIO=…`: a per-tunnel ping tally, the
once-only key check over the gateways' journals, the failures named with their
reasons, and a text clip that never cuts a word.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qsgw_lab.scenarios.checks import ConsumedKey, key_reuse_problems
from qsgw_lab.sitelab import Site, SiteLab


def clip(text: str, width: int) -> str:
    """At most `width` characters, cut at a word boundary with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[: width - 1].rsplit(" ", 1)[0] if " " in text[: width - 1] else text[: width - 1]
    return cut.rstrip(",;:") + "…"


@dataclass
class PingTally:
    """Pings sent and answered through each tunnel, by label."""

    counts: dict[str, list[int]] = field(default_factory=dict)

    def record(self, label: str, answered: bool) -> None:
        sent_ok = self.counts.setdefault(label, [0, 0])
        sent_ok[0] += 1
        sent_ok[1] += int(answered)

    def line(self, label: str) -> str:
        sent, ok = self.counts.get(label, [0, 0])
        return f"pings {ok}/{sent}"

    def silent(self) -> list[str]:
        """Tunnels that never carried a ping (or were never pinged)."""
        return [label for label, (_sent, ok) in self.counts.items() if ok == 0]


def consumed_keys(sites: Iterable[Site]) -> dict[str, list[ConsumedKey]]:
    """Each gateway's journal of consumed QKD key_IDs (read-only)."""
    out: dict[str, list[ConsumedKey]] = {}
    for site in sites:
        path = site.dir / "state" / "journal.db"
        if not path.exists():
            out[site.gateway_id] = []
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = db.execute("SELECT key_id, peer_id, epoch FROM key_ids").fetchall()
        finally:
            db.close()
        out[site.gateway_id] = [ConsumedKey(site.gateway_id, str(k), str(p),
                                            None if e is None else int(e)) for k, p, e in rows]
    return out


def once_only_check(sitelab: SiteLab) -> tuple[str, list[str]]:
    """The once-only key check: a summary line, and the problems (empty: none)."""
    consumed = consumed_keys(sitelab.sites.values())
    delivered = {s.sae_id: sitelab.delivered(s.sae_id) for s in sitelab.sites.values()}
    problems = key_reuse_problems(consumed, delivered)
    used = sum(len(v) for v in consumed.values())
    line = (f"  QKD key_IDs journalled across all gateways: {used}; "
            f"{'no key used twice' if not problems else 'REUSE: ' + '; '.join(problems)}")
    return line, problems


def why(status: dict[str, Any] | None) -> str:
    """A tunnel's own words for what is wrong with it (its `qsgw status` entry)."""
    if status is None:
        return "its daemon does not answer"
    parts = [f"state {status.get('state')}"]
    for key, label in (("last_error", ""), ("last_tunnel_down", "went down: ")):
        if status.get(key) and label + str(status[key]) not in parts:
            parts.append(label + clip(str(status[key]), 480))
    return "; ".join(parts)


def keep_logs(workdir: Path, name: str) -> Path:
    """Copy a failed run's configs and logs out of its temporary directory."""
    dest = Path(tempfile.mkdtemp(prefix=f"qsgw-{name}-failed-{time.strftime('%H%M%S')}-"))
    # Logs and configs only: no secret (keys, PSKs, certificates' keys) leaves.
    skip = shutil.ignore_patterns("*.sock", "*.vici", "*.key", "*.psk", "*.pem")
    shutil.copytree(workdir, dest, ignore=skip, ignore_dangling_symlinks=True,
                    dirs_exist_ok=True)
    return dest


def report_failures(failures: list[str], workdir: Path, name: str) -> None:
    """Print what failed, one line each, and keep the run's logs (their path printed)."""
    if not failures:
        return
    print(f"\nFAILED: {len(failures)} problem(s):")
    print("\n".join(f"  {f}" for f in failures))
    print(f"configs and logs kept in {keep_logs(workdir, name)}")
