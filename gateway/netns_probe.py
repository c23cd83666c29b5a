"""Whether network namespaces can be used here: root and a kernel that makes one.

The doctor asks this for the appliance; the lab (qsgw_lab.netns) asks it before
it builds sites. pyroute2 does the probe.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import secrets

from pyroute2 import netns

__all__ = ["netns_unavailable_reason"]

#: The probe namespace's name starts with this (the lab's prefix, so its
#: `cleanup_stale` also removes a probe a crash left behind).
PROBE_PREFIX = "qsgw"


def _probe() -> str | None:
    name = f"{PROBE_PREFIX}-probe-{secrets.token_hex(3)}"
    try:
        netns.create(name)
    except OSError as exc:
        return f"cannot create a network namespace: {exc.strerror or exc}"
    with contextlib.suppress(OSError):
        netns.remove(name)
    return None


@functools.cache  # one probe per process: root and netns support do not change
def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veths and wireguard-go)"
    # pyroute2's sync sockets fail inside a running event loop (async tests, the
    # demo); a worker thread has none.
    with concurrent.futures.ThreadPoolExecutor(1, "netns-probe") as pool:
        return pool.submit(_probe).result()
