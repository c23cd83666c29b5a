"""One `qsgw doctor` check's result: what was looked at, whether it is there, and its fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["ok", "warn", "missing"]


@dataclass(frozen=True)
class Finding:
    """One check's result. `component` is the name tests ask for (tests/_requires.py)."""

    component: str
    check: str
    status: Status
    detail: str
    fix: str = ""
    by_setup: bool = False  # `make setup` installs it: missing means setup is incomplete
    feature: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix and not self.ok else ""
        return f"{self.check}: {self.status} ({self.detail}){fix}"


def _ok(component: str, check: str, detail: str, feature: str, by_setup: bool = True) -> Finding:
    return Finding(component, check, "ok", detail, "", by_setup, feature)
