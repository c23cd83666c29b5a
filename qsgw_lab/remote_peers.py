"""Thousands of remote gateways in one process: the far ends of a hub, for the scale bench.

Each identity is a whole remote side as the hub sees it: its own gateway ID and
signing identity, its own SAE with its own client certificate at the KME
simulator, its own control address (127.20.x.y, bound as the source of what it
sends). What runs is the project's own handshake code: `InitiatorHandshake` for
the peers that initiate towards the hub and `ResponderHandshake` for those the
hub initiates to, pumped here over real TCP with the daemon's framing, with
real ETSI 014 calls (enc_keys / dec_keys over mutual TLS) for the QKD keys.
What a remote side does not run: a tunnel (the key is checked and dropped), a
journal (its epochs and used key_IDs are kept in memory, and reported).

One scheduler task (a heap of due times) starts the initiations, not a task per
peer: the first of each peer falls anywhere in the warm-up, the later ones every
rekey interval plus up to 10 % jitter, as the daemon schedules its own.

    python -m qsgw_lab.remote_peers SPEC.json   (SIGTERM: stop, write SPEC.result.json)
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.crypto.suites import lookup_suite
from gateway.daemon.framing import FrameError, read_frame, write_frame
from gateway.handshake import (
    CommitEpoch,
    FetchQkdKeys,
    FetchQkdKeysById,
    HandshakeFailed,
    HandshakeParams,
    InitiatorHandshake,
    InstallKey,
    QkdKey,
    QkdPolicy,
    Rejected,
    ResponderHandshake,
    SendMessage,
)
from gateway.handshake.codec import decode
from gateway.handshake.messages import Init
from gateway.identity import LocalIdentity, PublicIdentity
from kms_client import KmeClient, KmeEndpoint, KmsError, SaeCredentials

IO_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 30.0
MAX_FRAME = 65536


@dataclass
class RemotePeer:
    """One remote gateway: who it is, and what it has done."""

    peer_id: str
    sae_id: str
    address: str
    initiates: bool
    params: HandshakeParams
    cert: Path
    key: Path
    last_epoch: int = 0
    epochs: int = 0
    failures: int = 0
    last_error: str = ""
    key_ids: list[str] = field(default_factory=list)  # of finished handshakes
    # Committed by a handshake that did not finish (cut by a stop, or failed): an
    # initiator commits before its INIT, which the hub may never have journalled.
    unfinished_key_ids: list[str] = field(default_factory=list)
    busy: bool = False
    streak: int = 0  # initiations failed in a row


@dataclass
class Conn:
    """One handshake's TCP connection (the initiator's opens when INIT is ready)."""

    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None


class RemotePeers:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        hub = PublicIdentity.from_text(spec["hub_identity"])
        suite = lookup_suite(spec.get("suite", "default"))
        self.peers: dict[str, RemotePeer] = {}
        for p in spec["peers"]:
            ident = LocalIdentity.load(p["identity_dir"])
            params = HandshakeParams(
                local_id=p["id"], peer_id=spec["hub_id"], identity=ident, peer_identity=hub,
                suite=suite, qkd_policy=QkdPolicy(spec.get("qkd", "required")),
                timestamp_window_s=float(spec.get("timestamp_window_s", 60.0)))
            self.peers[p["id"]] = RemotePeer(p["id"], p["sae_id"], p["address"],
                                             bool(p["initiates"]), params,
                                             Path(p["cert"]), Path(p["key"]))
        self.kme = KmeEndpoint(spec["kme_url"], spec["kme_id"], Path(spec["ca"]))
        self.errors: dict[str, int] = {}
        self.cut_at_stop: dict[str, int] = {}
        self._heap: list[tuple[float, str, bool]] = []  # (due, peer, regular) initiations
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._clients: dict[str, KmeClient] = {}

    # ------------------------------------------------------------------ KME

    def _kme(self, peer: RemotePeer) -> KmeClient:
        # One client per remote gateway, its connection dropped after each call: a
        # remote gateway calls its KME once per epoch, minutes apart. Kept connections
        # were tried (the simulator then held 10,000 idle ones and the 10,000-peer
        # warm-up collapsed); a client per call loaded the TLS context every time,
        # a fifth of this process's CPU.
        client = self._clients.get(peer.peer_id)
        if client is None:
            client = self._clients[peer.peer_id] = KmeClient(
                [self.kme], SaeCredentials(peer.sae_id, peer.cert, peer.key),
                timeout=float(self.spec.get("kme_timeout_s", 10.0)))
        return client

    async def _keys(self, peer: RemotePeer, action: FetchQkdKeys | FetchQkdKeysById
                    ) -> list[QkdKey]:
        client = self._kme(peer)
        try:
            if isinstance(action, FetchQkdKeys):
                got = await client.enc_keys(self.spec["hub_sae_id"], number=action.count)
            else:
                got = await client.dec_keys(self.spec["hub_sae_id"], list(action.key_ids),
                                            deadline_s=5.0)
        finally:
            await client.drop_connections()
        return [QkdKey(k.key_id, bytes(k.key)) for k in got.keys]

    # ------------------------------------------------------------------ the pump

    async def _pump(self, peer: RemotePeer, machine: InitiatorHandshake | ResponderHandshake,
                    actions: list[Any], conn: Conn) -> None:
        try:
            await self._steps(peer, machine, actions, conn)
        finally:
            if conn.writer is not None:
                conn.writer.close()

    async def _steps(self, peer: RemotePeer, machine: InitiatorHandshake | ResponderHandshake,
                     actions: list[Any], conn: Conn) -> None:
        committed: list[str] = []
        try:
            await self._step_through(peer, machine, actions, conn, committed)
        except BaseException:
            peer.unfinished_key_ids.extend(committed)
            raise
        peer.key_ids.extend(committed)

    async def _step_through(self, peer: RemotePeer,
                            machine: InitiatorHandshake | ResponderHandshake,
                            actions: list[Any], conn: Conn, committed: list[str]) -> None:
        queue = list(actions)
        installed = False
        while True:
            while queue:
                action = queue.pop(0)
                if isinstance(action, SendMessage):
                    if conn.writer is None:  # the initiator connects once INIT is ready
                        conn.reader, conn.writer = await asyncio.wait_for(
                            asyncio.open_connection(self.spec["hub_host"], self.spec["hub_port"],
                                                    local_addr=(peer.address, 0)), IO_TIMEOUT_S)
                    assert conn.writer is not None
                    await write_frame(conn.writer, action.data, IO_TIMEOUT_S)
                elif isinstance(action, CommitEpoch):
                    if action.epoch is not None:
                        if action.epoch <= peer.last_epoch:
                            raise RuntimeError(f"epoch {action.epoch} not above {peer.last_epoch}")
                        peer.last_epoch = action.epoch
                    committed.extend(action.key_ids)
                elif isinstance(action, FetchQkdKeys | FetchQkdKeysById):
                    try:
                        keys = await self._keys(peer, action)
                    except KmsError as exc:
                        queue.extend(machine.on_qkd_unavailable(str(exc), time.time()))
                        continue
                    queue.extend(machine.on_qkd_keys(keys, time.time()))
                elif isinstance(action, InstallKey):
                    installed = True  # no tunnel here: the key is dropped
                    if isinstance(machine, ResponderHandshake):
                        queue.extend(machine.on_installed(time.time()))
                elif isinstance(action, Rejected | HandshakeFailed):
                    raise RuntimeError(f"{action.reason.value}: {action.detail}")
            if machine.finished:
                break
            assert conn.reader is not None
            frame = await read_frame(conn.reader, MAX_FRAME, IO_TIMEOUT_S)
            queue.extend(machine.on_message(frame, time.time()))
        if not installed:
            raise RuntimeError("handshake ended without a key")
        peer.epochs += 1

    def _failed(self, peer: RemotePeer, exc: BaseException) -> None:
        if self._stop.is_set():  # cut by our own stop: reported apart, no failure
            kind = type(exc).__name__
            self.cut_at_stop[kind] = self.cut_at_stop.get(kind, 0) + 1
            return
        peer.failures += 1
        peer.last_error = f"{type(exc).__name__}: {exc}"[:200]
        if sum(self.errors.values()) < 20:  # the first few, for the lab's log
            print(f"{peer.peer_id}: {peer.last_error}", file=sys.stderr, flush=True)
        self._count(f"{type(exc).__name__}: {str(exc)[:60]}")

    def _count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    # ------------------------------------------------------------------ responder

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: RemotePeer | None = None
        try:
            first = await read_frame(reader, MAX_FRAME, IO_TIMEOUT_S)
            init = decode(first)
            if not isinstance(init, Init) or init.responder_id not in self.peers:
                self._count("refused: not an INIT for one of ours")
                return
            if self._stop.is_set():
                return
            if self.peers[init.responder_id].busy:
                self._count("refused: a handshake of that peer is in progress")
                return
            peer = self.peers[init.responder_id]
            peer.busy = True
            machine = ResponderHandshake(peer.params, peer.last_epoch, time.time())
            actions = machine.on_message(first, time.time())
            await asyncio.wait_for(self._pump(peer, machine, actions, Conn(reader, writer)),
                                   HANDSHAKE_TIMEOUT_S)
        except (Exception, FrameError) as exc:  # counted, reported at the end
            if peer is not None:
                self._failed(peer, exc)
        finally:
            if peer is not None:
                peer.busy = False
            writer.close()

    # ------------------------------------------------------------------ initiator

    async def _initiate(self, peer: RemotePeer) -> None:
        if peer.busy:
            return
        peer.busy = True
        try:
            machine = InitiatorHandshake(peer.params, peer.last_epoch + 1, time.time())
            await asyncio.wait_for(self._pump(peer, machine, machine.start(time.time()), Conn()),
                                   HANDSHAKE_TIMEOUT_S)
        except Exception as exc:
            self._failed(peer, exc)
            # As the daemon does: retry soon, backing off exponentially with full jitter,
            # so that thousands of peers failing together do not come back as a storm.
            peer.streak += 1
            base = min(60.0, 2.0 * 2 ** (peer.streak - 1))
            heapq.heappush(self._heap, (time.monotonic() + random.uniform(base / 2, base),
                                        peer.peer_id, False))
        else:
            peer.streak = 0
        finally:
            peer.busy = False

    async def _schedule(self) -> None:
        interval = float(self.spec["rekey_interval_s"])
        warmup = float(self.spec["warmup_s"])
        go = Path(self.spec["go_file"])  # the lab makes it once the hub is up
        while not go.exists():
            await asyncio.sleep(0.2)
        now = time.monotonic()
        heap = self._heap = [(now + random.uniform(0.0, warmup), p.peer_id, True)
                             for p in self.peers.values() if p.initiates]
        heapq.heapify(heap)
        while heap and not self._stop.is_set():
            due, peer_id, regular = heap[0]
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), min(delay, 1.0))
                continue
            if regular:
                heapq.heapreplace(heap, (due + interval * random.uniform(1.0, 1.1), peer_id,
                                         True))
            else:  # a retry after a failure: once
                heapq.heappop(heap)
            task = asyncio.create_task(self._initiate(self.peers[peer_id]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ main

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        server = await asyncio.start_server(self._serve, "0.0.0.0",  # noqa: S104 - in a lab netns
                                            int(self.spec["listen_port"]), backlog=4096)
        Path(self.spec["ready_file"]).write_text("ready\n")
        scheduler = asyncio.create_task(self._schedule())
        await self._stop.wait()
        scheduler.cancel()
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):  # handshakes being answered may finish
            await asyncio.wait_for(server.wait_closed(), 5)

    def result(self) -> dict[str, Any]:
        return {
            "peers": {p.peer_id: {"epochs": p.epochs, "failures": p.failures,
                                  "last_epoch": p.last_epoch, "key_ids": p.key_ids,
                                  "unfinished_key_ids": p.unfinished_key_ids,
                                  "last_error": p.last_error}
                      for p in self.peers.values()},
            "errors": self.errors,
            "cut_at_stop": self.cut_at_stop,
        }


def main(argv: list[str]) -> int:
    spec_path = Path(argv[0])
    peers = RemotePeers(json.loads(spec_path.read_text()))
    asyncio.run(peers.run())
    out = spec_path.with_suffix(".result.json")
    out.write_text(json.dumps(peers.result()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
