"""`qsgw kms probe` against the real simulator over mutual TLS on every seed topology (all
pass), and against FAKE KMEs with known deviations (each reported by name). A fake here
is the simulator behind a rewriting HTTPS front (the simulator itself, being conforming,
cannot show these faults): it answers as the simulator does except for one deviation."""

from __future__ import annotations

import argparse
import json
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from kms_client import probe_cli
from kms_client.probe import Probe, Sae, render
from kms_client.sim.server import Simulator

SEEDS = Path(__file__).resolve().parents[2] / "configs" / "topologies"


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    probe_cli.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("name", ["benelux-mdi", "beqci", "int-uqkd", "madqci"])
async def test_probe_passes_on_every_seed(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Simulator.start(SEEDS / f"{name}.yaml", tmp_path, record_keys=True) as sim:
        for master, slave in sim.endpoints["pairs"][:2]:
            rc = await probe_cli._run(_args("--endpoints", str(sim.state_dir / "endpoints.json"),
                                            "--master", master, "--slave", slave, "--json"))
            out = capsys.readouterr().out
            report = json.loads(out)
            failed = [c for c in report["checks"] if c["ok"] is False]
            assert rc == 0 and not failed, failed
            names = {c["name"] for c in report["checks"]}
            assert {"status.fields", "enc_keys.post", "enc_keys.get", "dec_keys.post",
                    "dec_keys.get", "keys.single_use", "size.not_multiple_of_8",
                    "size.too_big", "extension_mandatory.unknown", "dec_keys.unnamed_sae",
                    "error_body.json", "multicast"} <= names
            # Never a key: none of the keys handed out appears in the report.
            assert sim.recorded_keys and not any(k in out for k in sim.recorded_keys.values())
        assert sim.pending_key_count() == 0  # every key it asked for was fetched at both ends


# ------------------------------------------------------------ fakes with deviations

Rewrite = Callable[[web.Request, bytes, httpx.Response], Awaitable[web.Response | None]]


@asynccontextmanager
async def deviant_front(sim: Simulator, kme_id: str, rewrite: Rewrite
                        ) -> AsyncIterator[str]:
    """A FAKE KME: relays to the simulator's KME with the caller's certificate, and lets
    `rewrite` replace an answer (None keeps the simulator's)."""
    assert sim.pki is not None
    ep = sim.endpoints
    clients: dict[str, httpx.AsyncClient] = {}

    async def relay(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        cn = next(v for rdn in peer["subject"] for k, v in rdn if k == "commonName")
        if cn not in clients:
            s = ep["saes"][cn]
            ctx = ssl.create_default_context(cafile=ep["kmes"][kme_id]["ca"])
            ctx.load_cert_chain(s["cert"], s["key"])
            clients[cn] = httpx.AsyncClient(base_url=ep["kmes"][kme_id]["url"], verify=ctx)
        body = await request.read()
        upstream = await clients[cn].request(
            request.method, request.path, params=dict(request.query), content=body or None,
            headers={"Content-Type": "application/json"} if body else None)
        replaced = await rewrite(request, body, upstream)
        if replaced is not None:
            return replaced
        return web.Response(status=upstream.status_code, body=upstream.content,
                            content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(sim.pki.ca_cert))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(str(sim.pki.kmes[kme_id].cert), str(sim.pki.kmes[kme_id].key))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        for c in clients.values():
            await c.aclose()
        await runner.cleanup()


def _msg(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=json.dumps({"message": message}),
                        content_type="application/json")


async def html_errors(req: web.Request, body: bytes, up: httpx.Response) -> web.Response | None:
    if up.status_code == 400:
        return web.Response(status=400, text="<html><body>Bad Request</body></html>",
                            content_type="text/html")
    return None


async def validation_422(req: web.Request, body: bytes, up: httpx.Response
                         ) -> web.Response | None:
    if up.status_code == 400 and b"size" in up.content:
        return _msg(422, "1 validation error: size")
    return None


async def unknown_key_words(req: web.Request, body: bytes, up: httpx.Response
                            ) -> web.Response | None:
    if req.path.endswith("dec_keys") and up.status_code == 400:
        return _msg(400, "Some of the requested keys do not exist in this KME.")
    return None


FAKES: dict[str, tuple[str, Rewrite, set[str]]] = {
    # fake name: (KME it fronts, rewrite, the checks that must fail, and no other)
    "html error pages": ("master", html_errors, {"error_body.json"}),
    "422 for validation": ("master", validation_422, {"size.not_multiple_of_8", "size.too_big"}),
    "unknown key in non-spec words": ("slave", unknown_key_words, {"dec_keys.unknown_key"}),
}

TOPOLOGY = """
name: probefakes
defaults: {key_size: 256, min_key_size: 64, max_key_size: 1024, max_key_per_request: 8,
           max_SAE_ID_count: 0}
kmes:
  - {id: KME_A, saes: [SAE_A]}
  - {id: KME_B, saes: [SAE_B]}
links:
  - {id: ab, kind: point_to_point, kmes: [KME_A, KME_B], rate_bps: 0, capacity_bits: 1000000}
"""


def _sae(ep: dict[str, Any], sae: str, url: str | None = None) -> Sae:
    s = ep["saes"][sae]
    k = ep["kmes"][s["kme"]]
    return Sae(sae, url or k["url"], s["kme"], Path(k["ca"]), Path(s["cert"]), Path(s["key"]))


@pytest.mark.parametrize("fake", list(FAKES))
async def test_probe_names_each_deviation(fake: str, tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    side, rewrite, checks = FAKES[fake]
    async with Simulator.start(tmp_path / "t.yaml", tmp_path / "state") as sim:
        ep = sim.endpoints
        kme = "KME_A" if side == "master" else "KME_B"
        async with deviant_front(sim, kme, rewrite) as url:
            master = _sae(ep, "SAE_A", url if side == "master" else None)
            slave = _sae(ep, "SAE_B", url if side == "slave" else None)
            report = await Probe(master, slave, timeout=5).run()
    failed = {c.name for c in report.failed}
    assert failed == checks, render(report)
    text = render(report)
    assert all(re.search(rf"^{re.escape(c)}\s+FAIL", text, re.M) for c in checks), text
    if fake == "unknown key in non-spec words":
        assert any(s.startswith("kme.dialect: oss-flask") for s in report.suggestions), text


async def test_probe_names_a_kme_that_drops_pending_keys(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    latest: dict[str, list[str]] = {}

    async def drops_pending(req: web.Request, body: bytes, up: httpx.Response
                            ) -> web.Response | None:
        # A FAKE slave KME that keeps only the latest enc_keys batch of the pair.
        if req.path.endswith("dec_keys") and up.status_code == 200:
            ids = [k["key_ID"] for k in up.json()["keys"]]
            newest = latest.get("ids", [])
            if not set(ids) <= set(newest):
                return _msg(400, "one or more keys specified are not found on KME")
        return None

    async with Simulator.start(tmp_path / "t.yaml", tmp_path / "state") as sim:
        ep = sim.endpoints

        async def track(req: web.Request, body: bytes, up: httpx.Response
                        ) -> web.Response | None:
            if req.path.endswith("enc_keys") and up.status_code == 200:
                latest["ids"] = [k["key_ID"] for k in up.json()["keys"]]
            return None

        async with deviant_front(sim, "KME_A", track) as murl, \
                deviant_front(sim, "KME_B", drops_pending) as surl:
            report = await Probe(_sae(ep, "SAE_A", murl), _sae(ep, "SAE_B", surl)).run()
    assert "keys.kept_across_requests" in {c.name for c in report.failed}, render(report)
    assert any(s.startswith("kme.prefetch: false") for s in report.suggestions)
