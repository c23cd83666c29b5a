"""KME simulator: a real ETSI GS QKD 014 server over mutual TLS, from a topology file.

In process (tests, demo, benchmarks)::

    from kms_client.sim import Simulator
    async with Simulator.start(topology_path, state_dir, host="127.0.0.1") as sim:
        sim.endpoints                 # the dict written to state_dir/endpoints.json
        sim.admin_url                 # fault injection, plain HTTP on 127.0.0.1
        sim.set_fault("KME_UPM", outage=True)   # replaces that KME's fault
        sim.update_fault("KME_UPM", latency_s=0.2)   # changes only the named fields
        sim.drain_pools("KME_UPM")    # empty its pools once; they refill at their rates
        sim.clear_faults()            # or clear_faults("KME_UPM")
        sim.delivered_key_ids("SAE_UPM_GW")     # every key_ID delivered to it, in order

As a process: ``qsgw kme-sim --topology FILE --state-dir DIR [--host H] [--base-port P]
[--admin-port P]``; it writes DIR/endpoints.json, prints where each KME listens and which
files each SAE uses, and stops on SIGTERM/SIGINT.

Topology YAML (see configs/topologies/ for the seed deployments)::

    name: madqci
    defaults:                 # ETSI 014 limits of every link, each optional
      key_size: 256           # bits; sizes are multiples of 8
      min_key_size: 64
      max_key_size: 1024
      max_key_per_request: 128
      max_SAE_ID_count: 2     # additional slaves allowed (multicast); 0: none
    kmes:
      - id: KME_UPM
        port: 8533            # optional; --base-port overrides
        saes: [SAE_UPM_GW, SAE_UPM_BACKUP]
        local_rate_bps: 1000000       # keys for two SAEs of this KME (own random source)
        local_capacity_bits: 10000000
        faults: {latency_s: 0.1}      # optional, as in faults.Fault
    links:
      - {id: l1, kind: point_to_point, kmes: [KME_A, KME_B], rate_bps: 2000,
         capacity_bits: 1048576, initial_fill: 1.0}
      - {id: h1, kind: mdi_hub, hub: HUB, ends: [KME_A, KME_B, KME_C], rate_bps: 2000,
         capacity_bits: 1048576}     # rate and pool per pair of end nodes ("h1:KME_A-KME_B")
      - {id: h2, kind: mdi_hub, hub: HUB2, ends: [KME_A, KME_B, KME_C], shared: true,
         rate_bps: 6000, capacity_bits: 1048576}   # one pool "h2", time-shared by the pairs
      - {id: sat, kind: point_to_point, kmes: [KME_A, KME_D], rate_bps: 2048,
         capacity_bits: 8192, passes: {period_s: 30, duration_s: 10, offset_s: 0}}
                              # makes key only in [offset + k*period, ... + duration), t in
                              # seconds since the start; stored key is usable between passes
      - {id: r1, kind: trusted_relay, path: [KME_A, KME_B, KME_C]}   # hops: earlier links
    pairs: [[SAE_A, SAE_B]]   # optional (master, slave); default: every SAE pair that
                              # can share keys, the lower SAE ID as master

Every key carries ``key_ID_extension: {"qsgw_route": {"kind", "link", "path"}}``; for a
relay the path lists the trusted nodes. Faults: latency, a share of 503s, outages (503
with an error body; the listener stays up), pools held empty, late arrival of keys at
the slave's KME (dec_keys answers 400 "one or more keys specified are not found on KME"
until then). The admin endpoint's JSON is described in kms_client.sim.admin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kms_client.sim.faults import Fault
    from kms_client.sim.server import Simulator
    from kms_client.sim.topology import Topology, load_topology

__all__ = ["Fault", "Simulator", "Topology", "load_topology"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `qsgw kme-sim --help` and topology checks do not import aiohttp.
    if name == "Simulator":
        from kms_client.sim.server import Simulator

        return Simulator
    if name == "Fault":
        from kms_client.sim.faults import Fault

        return Fault
    if name in ("Topology", "load_topology"):
        from kms_client.sim import topology

        return getattr(topology, name)
    raise AttributeError(name)
