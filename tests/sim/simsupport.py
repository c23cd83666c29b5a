"""Helpers shared by the simulator tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import httpx

# A-B: a direct link with no refill (64 keys of 256 bits) so counts are exact;
# B-C: a direct link; A-B-C: a trusted relay; D: a KME with no link; A serves two SAEs.
TEST_TOPOLOGY = """
name: test
defaults:
  key_size: 256
  min_key_size: 64
  max_key_size: 512
  max_key_per_request: 8
  max_SAE_ID_count: 2
kmes:
  - {id: KME_A, saes: [SAE_A1, SAE_A2]}
  - {id: KME_B, saes: [SAE_B]}
  - {id: KME_C, saes: [SAE_C]}
  - {id: KME_D, saes: [SAE_D]}
links:
  - {id: ab, kind: point_to_point, kmes: [KME_A, KME_B], rate_bps: 0, capacity_bits: 16384}
  - {id: bc, kind: point_to_point, kmes: [KME_B, KME_C], rate_bps: 0, capacity_bits: 16384}
  - {id: abc, kind: trusted_relay, path: [KME_A, KME_B, KME_C]}
"""


def tls_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


ClientFactory = Callable[..., httpx.AsyncClient]


def make_client(
    endpoints: dict[str, Any],
    sae: str,
    kme: str | None,
    made: list[httpx.AsyncClient],
    **kw: Any,
) -> httpx.AsyncClient:
    """An httpx client with that SAE's certificate, at its own KME unless `kme` is named."""
    s = endpoints["saes"][sae]
    k = endpoints["kmes"][kme or s["kme"]]
    c = httpx.AsyncClient(
        base_url=k["url"], verify=tls_context(k["ca"], s["cert"], s["key"]), timeout=10.0, **kw
    )
    made.append(c)
    return c
