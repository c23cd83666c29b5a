"""Route-based IPsec: the XFRM interface (link kind `xfrm`, an `if_id`) through pyroute2.

strongSwan binds the CHILD_SA's policies and states to the same if_id
(`if_id_in`/`if_id_out`), so what is routed into the interface is protected
and what the SA decapsulates comes out of it, as with a VTI. qsgw owns the
link, its addresses and its routes (manage: full); all calls block (run them
in a thread). Netlink errors carry only an errno.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.tunnels import wireguard_common as wgc
from gateway.tunnels.base import TunnelError

__all__ = ["XfrmInterface", "create", "delete"]


@dataclass(frozen=True, slots=True)
class XfrmInterface:
    name: str
    if_id: int
    addresses: Sequence[str] = ()
    routes: Sequence[str] = ()
    netns: str | None = None


def create(x: XfrmInterface) -> bool:
    """The link (if missing), its addresses, up, a route per prefix; True if it was made.

    An existing link of another kind or if_id under the name is refused, never adopted."""
    from pyroute2 import IPRoute, NetNS
    from pyroute2.netlink.exceptions import NetlinkError

    made = False
    with IPRoute() if x.netns is None else NetNS(x.netns) as ipr:
        found = ipr.link_lookup(ifname=x.name)
        if found:
            link = ipr.get_links(found[0])[0]
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
            if_id = data.get_attr("IFLA_XFRM_IF_ID") if data is not None else None
            if kind != "xfrm" or if_id != x.if_id:
                raise TunnelError(f"{x.name}: exists as {kind or 'unknown'} (if_id {if_id}), "
                                  f"not an xfrm interface with if_id {x.if_id}")
        else:
            try:
                ipr.link("add", ifname=x.name, kind="xfrm", xfrm_if_id=x.if_id)
            except NetlinkError as exc:
                if exc.code in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    raise TunnelError(f"{x.name}: kernel has no xfrm_interface module "
                                      "(modprobe xfrm_interface)") from exc
                raise TunnelError(f"{x.name}: cannot create: {os.strerror(exc.code)}") from exc
            made = True
    wgc.configure_interface(x.name, x.netns, list(x.addresses), list(x.routes))
    return made


def delete(x: XfrmInterface) -> None:
    wgc.delete_interface(x.name, x.netns)
