"""Best-effort wiping of secrets held in mutable buffers.

Python copies immutable ``bytes`` freely, so only ``bytearray`` buffers can be
wiped; the protocol keeps the secrets it hands out (tunnel keys, QKD keys it
concatenates) in bytearrays for that reason.
"""

from __future__ import annotations


def wipe(buf: bytearray | memoryview | None) -> None:
    """Overwrite ``buf`` with zeros in place (no-op for None or empty)."""
    if buf is None:
        return
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if view.readonly:
        raise TypeError("cannot wipe a read-only buffer")
    view.cast("B")[:] = bytes(view.nbytes)
