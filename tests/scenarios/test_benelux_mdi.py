"""Benelux cross-border MDI-QKD (seed 000): the untrusted hub at Arlon, a full mesh of
end nodes, and a new end node added to the running network.

Kirchberg, Redu and Belval mesh through the hub; every QKD key's audit record, at
both ends, names the hub as the untrusted MDI hub of a direct end-to-end route
(never a trusted relay), and no gateway config names it. The pools are cut to two
keys, so the mesh lives on the 132 km span's 400 bit/s per pair: no epoch goes
without a QKD key and the pools grow. Bissen joins (its gateway starts, the other
three reload on SIGHUP) while the three existing tunnels are pinged five times a
second: no more than one echo request in a row goes unanswered, their sessions keep
counting epochs without a restart, no tunnel goes down and no WireGuard interface is
recreated; then Bissen's three tunnels carry traffic and rotate.
"""

from __future__ import annotations

import time

from qsgw_lab.scenarios import benelux_mdi as bm

from .conftest import OpenRun, assert_whole_scenario_works

FIRST = {"kirchberg", "redu", "belval"}


def test_benelux_mdi_mesh_through_untrusted_hub_and_a_node_joins_live(
        open_run: OpenRun) -> None:
    with open_run("benelux-mdi") as run:
        first = list(run.tunnels.values())
        assert set(run.sites) == FIRST
        assert len(first) == 3  # the full mesh of the three
        assert run.wait_rotations(1, 40), {run.label(t): run.epochs_made(t) for t in first}
        for t in first:
            assert run.wait_ping(t, 10), run.label(t)

        # Key supply: one pairwise stream per pair of end nodes through the hub, the
        # new node's KME already on the hub (the QKD network provisioned it); the
        # mesh asks well under what the 132 km span makes.
        pools = bm.hub_pools(run)
        assert len(pools) == 6, sorted(pools)  # 4 end KMEs: 6 pairs
        assert all(name.count("KME_") == 2 and bm.HUB not in name for name in pools)
        rate = bm.span_rate_bps(run)
        assert rate == 400
        assert all(3 * bm.demand_bps(t) <= rate for t in first)
        assert not bm.hub_holds_nothing(run)
        bm.live_on_rate(run)

        # The join, watched from the existing tunnels.
        watch = bm.JoinWatch(run, first)
        watch.start()
        try:
            time.sleep(2.0)  # pings before the join too
            assert bm.reloads(run) == {n: 0 for n in FIRST}
            join_at = time.time()
            added = bm.join_new_node(run)
            assert sorted(run.label(t) for t in added) == [
                "bissen-belval", "bissen-kirchberg", "bissen-redu"]
            for t in added:
                assert run.wait_ping(t, 30), run.label(t)
            assert run.wait_rotations(3, 40, added), {
                run.label(t): run.epochs_made(t) for t in added}
            report = watch.stop()
        finally:
            watch.close()  # on a failure: the pings and the sampler stop here
        lines = "\n".join(r.line() for r in report)
        print(lines)  # shown with the failure, or with -s
        for r in report:
            assert r.pings >= 50, lines  # 0.2 s apart, over at least 10 s
            assert r.longest_gap <= 1 and r.lost <= 2, lines
            assert not r.resets and r.tunnel_downs == 0 and not r.recreated, lines
            assert r.epochs_after >= r.epochs_before + 2, lines  # kept rotating meanwhile
        # Their audit trails agree: no failed epoch, state change or alarm about them.
        assert not bm.disturbances(run, join_at, first), bm.disturbances(run, join_at, first)
        print("\n".join(bm.describe_record(*r) for r in bm.audit_since(run, join_at)))
        # Each of the three took the new peer in on one reload, the others untouched.
        assert bm.reloads(run) == {**{n: 1 for n in FIRST}, bm.NEW_NODE: 0}
        for name in FIRST:
            site = run.sites[name]
            log = site.log_path.read_text(errors="replace")
            assert ": 1 added, 0 removed, 0 changed" in log, name  # "reloaded in X s: …"
            doc = run.sitelab.status(site)
            assert doc is not None
            assert len(doc["peers"]) == 3 and "gw-bissen" in {p["peer"] for p in doc["peers"]}

        # The hub never held a key: every QKD key used, at every end, came straight
        # from one end KME to the other with Arlon as untrusted hub, no relay.
        checked, problems = bm.key_origin_problems(run)
        assert not problems, problems
        assert checked >= 2 * 3 * len(run.tunnels), checked  # both ends, >= 3 epochs
        bissen = {tuple(o["path"]) for r in bm.epoch_records(run, bm.NEW_NODE)
                  for o in r["qkd_keys"]}
        assert {p[1] for p in bissen} == {bm.HUB}
        assert {p[0] for p in bissen} | {p[2] for p in bissen} == {
            "KME_BISSEN", "KME_KIRCHBERG", "KME_REDU", "KME_BELVAL"}
        assert not bm.hub_holds_nothing(run)  # the new node's config too

        # On the span's rate alone, every epoch still had a QKD key, and every pair's
        # pool holds more than at the cut.
        assert not bm.non_qkd_epochs(run), bm.non_qkd_epochs(run)
        now = bm.hub_pools(run)
        assert all(int(s["available_bits"]) > bm.LIVE_KEYS * bm.KEY_BITS
                   for s in now.values()), now

        assert len(run.tunnels) == 6
        assert_whole_scenario_works(run, rotations=3)
        # The new node's tunnels carried their first packets just now (the pings
        # above): their state follows at the next liveness sample.
        assert run.wait_ok(10), run.data_plane(run.tunnels.values())
        for t in run.tunnels.values():
            for side in ("a", "b"):
                st = run.peer(t, side)
                assert st is not None and st["tunnel_downs"] == 0, st
