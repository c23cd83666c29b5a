"""An attacker at a configured peer's address, for tests and bench/flood.py (never the daemon).

`python -m qsgw_lab.floodlab --target HOST:PORT --claim PEER --responder GW ...`
runs, for `--seconds`, the worst mix of issue 14 against a control server:
connections held open without a frame, slow drips, forged INITs (signed with a
stranger's key) each followed by a flood of frames, and replayed INITs (validly
signed with the peer's own identity, for an epoch already used). New connections
stay at `--rate` per second in all (at or under the server's rate limit).
It prints one JSON line of what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import time
from pathlib import Path

from gateway.crypto.suites import lookup_suite
from gateway.handshake import HandshakeParams, InitiatorHandshake, QkdKey, SendMessage
from gateway.identity import LocalIdentity


def make_init(identity: LocalIdentity, claim: str, responder: str, epoch: int,
              key_count: int = 1) -> bytes:
    """An INIT from `claim` to `responder`, signed by `identity`."""
    params = HandshakeParams(claim, responder, identity, LocalIdentity.generate().public,
                             lookup_suite("default"), qkd_key_count=key_count)
    now = time.time()
    m = InitiatorHandshake(params, epoch, now)
    m.start(now)
    keys = [QkdKey(os.urandom(16).hex(), os.urandom(32)) for _ in range(key_count)]
    return next(a.data for a in m.on_qkd_keys(keys, now) if isinstance(a, SendMessage))


def _frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class Attack:
    def __init__(self, host: str, port: int, forged: bytes, replayed: bytes | None,
                 rate: float, holders: int) -> None:
        self.host, self.port = host, port
        self.forged, self.replayed = forged, replayed
        self.rate, self.holders = rate, holders
        self.stats = {"connections": 0, "connect_failed": 0, "forged_inits": 0,
                      "replayed_inits": 0, "flood_frames": 0, "bytes_sent": 0}

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 3)
        except (OSError, TimeoutError):
            self.stats["connect_failed"] += 1
            return None
        self.stats["connections"] += 1
        return conn

    async def _send(self, w: asyncio.StreamWriter, data: bytes) -> bool:
        try:
            w.write(data)
            await asyncio.wait_for(w.drain(), 2)
        except (OSError, TimeoutError):
            return False
        self.stats["bytes_sent"] += len(data)
        return True

    async def _forged_flood(self) -> None:
        conn = await self._open()
        if conn is None:
            return
        _, w = conn
        self.stats["forged_inits"] += 1
        if await self._send(w, _frame(self.forged)):
            junk = _frame(os.urandom(1024)) * 64
            for _ in range(400):  # until the server closes on us
                if not await self._send(w, junk):
                    break
                self.stats["flood_frames"] += 64
        w.close()

    async def _replay(self) -> None:
        conn = await self._open()
        if conn is None or self.replayed is None:
            return
        r, w = conn
        self.stats["replayed_inits"] += 1
        await self._send(w, _frame(self.replayed))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(r.read(1), 12)  # hold it as long as the server lets us
        w.close()

    async def _drip(self) -> None:
        conn = await self._open()
        if conn is None:
            return
        _, w = conn
        data = _frame(self.forged)
        for i in range(len(data)):
            if not await self._send(w, data[i:i + 1]):
                break
            await asyncio.sleep(1.0)
        w.close()

    async def _holder(self, stop: float) -> None:
        # A connection that never sends: re-opened whenever the server drops it.
        while time.monotonic() < stop:
            conn = await self._open()
            if conn is None:
                await asyncio.sleep(1.0)
                continue
            r, w = conn
            with contextlib.suppress(Exception):
                await asyncio.wait_for(r.read(1), max(0.1, stop - time.monotonic()))
            w.close()
            await asyncio.sleep(1.0)

    async def run(self, seconds: float) -> dict[str, int]:
        stop = time.monotonic() + seconds
        tasks: set[asyncio.Task[None]] = {asyncio.create_task(self._holder(stop))
                                          for _ in range(self.holders)}
        kinds = [self._forged_flood, self._replay, self._forged_flood, self._drip]
        i = 0
        while time.monotonic() < stop:
            task = asyncio.create_task(kinds[i % len(kinds)]())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            await asyncio.sleep(1.0 / self.rate)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return self.stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="HOST:PORT of the control server")
    p.add_argument("--claim", required=True, help="the peer's gateway ID the INITs claim")
    p.add_argument("--responder", required=True, help="the attacked gateway's ID")
    p.add_argument("--identity-dir", type=Path, help="the peer's identity, for replayed INITs")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=4.5, help="new connections per second")
    p.add_argument("--holders", type=int, default=16, help="connections held open idle")
    args = p.parse_args()
    host, port = args.target.rsplit(":", 1)
    forged = make_init(LocalIdentity.generate(), args.claim, args.responder, 2**40)
    replayed = None
    if args.identity_dir is not None:  # validly signed, for an epoch long used
        replayed = make_init(LocalIdentity.load(args.identity_dir), args.claim, args.responder, 1)
    attack = Attack(host, int(port), forged, replayed, args.rate, args.holders)
    print(json.dumps(asyncio.run(attack.run(args.seconds))), flush=True)


if __name__ == "__main__":
    main()
