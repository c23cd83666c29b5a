"""The seed deployments, whole: real daemons, real tunnels, the KME simulator over
mutual TLS, one network namespace per site (prefix `qsscen`, removed after each test)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from _requires import require

from qsgw_lab.netns import NetnsLab
from qsgw_lab.scenarios import load
from qsgw_lab.scenarios.runner import ScenarioRun

OpenRun = Callable[..., AbstractContextManager[ScenarioRun]]


@pytest.fixture
def open_run(request: pytest.FixtureRequest) -> OpenRun:
    """`with open_run("beqci") as run:` a started scenario, torn down at the end."""

    @contextmanager
    def opener(name: str, start: bool = True, **kw: bool) -> Iterator[ScenarioRun]:
        scenario = load(name)
        ipsec = any(t.kind == "ipsec" for t in scenario.tunnels)
        require("netns", "wireguard-go", "wg", "ping", "tun",
                *(["charon", "swanctl", "unshare"] if ipsec else []))
        with tempfile.TemporaryDirectory(prefix=f"qsgw-{name}-") as tmp, \
                NetnsLab(prefix="qsscen") as lab:
            run = ScenarioRun(scenario, lab, Path(tmp), record_keys=True, **kw)
            try:
                if start:
                    run.start()
                yield run
            except BaseException:
                _dump_logs(Path(tmp))
                raise
            finally:
                run.close()

    return opener


def _dump_logs(tmp: Path) -> None:
    # Shown only for a failed test: the daemons' last lines, and the simulator's.
    for log in [*sorted(tmp.glob("*/daemon.log")), tmp / "kme-sim.log"]:
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()[-40:]
            print(f"--- {log.relative_to(tmp)} (last {len(lines)} lines)")
            print("\n".join(lines))


def assert_whole_scenario_works(run: ScenarioRun, rotations: int = 3,
                                timeout_s: float = 60.0) -> None:
    """What every scenario must show: traffic crosses every tunnel, every tunnel has
    rotated its key at least `rotations` times, and no QKD key was used twice
    anywhere in the scenario."""
    assert run.wait_rotations(rotations, timeout_s), {
        run.label(t): run.epochs_made(t) for t in run.tunnels.values()}
    lost = [run.label(t) for t in run.tunnels.values() if not run.wait_ping(t, 10)]
    assert not lost, f"no traffic through {lost}"
    problems = run.key_reuse_problems()
    assert not problems, problems
    used = run.consumed_keys()
    assert sum(len(v) for v in used.values()) > 0, "no QKD key was used at all"
