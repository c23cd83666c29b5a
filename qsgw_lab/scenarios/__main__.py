"""`make demo SCENARIO=<name>`: one seed deployment, whole, in network namespaces.

Builds the scenario's sites, the KME simulator on its topology and a `qsgw run`
per site, then plays the scenario's timeline (its module's `demo`), printing each
tunnel's state as `qsgw status` gives it and a ping through it. DEMO_SECONDS (or
--seconds) sets the length; Ctrl-C or the end removes every namespace and process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from gateway.config import ConfigError
from qsgw_lab.netns import NetnsLab, netns_unavailable_reason
from qsgw_lab.scenarios import SCENARIOS, load
from qsgw_lab.scenarios.runner import ScenarioRun
from qsgw_lab.sitelab import start_demo
from qsgw_lab.verdict import report_failures

PREFIX = "scen"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qsgw_lab.scenarios",
                                     description="Run one seed deployment as a demo.")
    parser.add_argument("name", choices=sorted(SCENARIOS))
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ["DEMO_SECONDS"])
                        if os.environ.get("DEMO_SECONDS") else None,
                        help="length of the timeline (default: the scenario's demo_seconds)")
    args = parser.parse_args(argv)
    reason = netns_unavailable_reason()
    if reason:
        print(f"the scenario needs network namespaces: {reason}", file=sys.stderr)
        return 1
    try:
        scenario = load(args.name)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    module = importlib.import_module(f"qsgw_lab.scenarios.{SCENARIOS[args.name]}")
    seconds = args.seconds or scenario.demo_seconds
    lock = start_demo(PREFIX)  # one demo per prefix; clears a crashed run's leftovers
    if lock is None:
        return 1
    failures: list[str] = []
    tmp = tempfile.mkdtemp(prefix=f"qsgw-{args.name}-")
    with lock, NetnsLab(prefix=PREFIX) as lab:
        run = ScenarioRun(scenario, lab, Path(tmp), broker=False)
        try:
            print(f"qsgw scenario {scenario.name}: {scenario.title}")
            print(f"  topology {scenario.topology_path.name}, rekey every "
                  f"{scenario.rekey_interval_s:g} s, key lifetime {scenario.key_lifetime_s:g} s, "
                  f"{seconds:.0f} s; configs and logs in {tmp}")
            module.demo(run, seconds, print)
            print("\nsummary:")
            print("\n".join(run.summary()))
            failures = run.failures()
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up")
            failures = ["interrupted"]
        except Exception as exc:
            failures = [f"the scenario itself failed: {type(exc).__name__}: {exc}"]
            raise
        finally:
            run.close()
            report_failures(failures, Path(tmp), args.name)
            shutil.rmtree(tmp, ignore_errors=True)
    print("scenario finished: namespaces, daemons, tunnels and the simulator are gone")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
