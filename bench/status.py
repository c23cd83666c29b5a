"""Status socket under a busy loop: time to read a 10,000-peer document, against a plain socket.

`python bench/status.py --json [--peers 10000] [--busy-ms 5] [--rounds 5]`

The daemon's `StatusServer` serves a document of the size 10,000 peers make while its
event loop is kept busy: tasks that each hold the loop for `--busy-ms` a turn (a hub
at ~40-60 % of a core, many handshakes' crypto a turn). A client in a thread reads it,
as `qsgw status` does. Baseline, in the same run: the same bytes through a unix
socket pair written by a plain thread (what the transfer itself costs), and the
server on an idle loop. The client is another process, as `qsgw status` is: its
time is from connect to the last byte, measured by that process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.daemon.status import StatusServer

# The client process: connect, read to the end, print the ms it took and the bytes.
CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
t0 = time.perf_counter()
s.connect(sys.argv[1])
n = 0
while chunk := s.recv(1 << 20):
    n += len(chunk)
print((time.perf_counter() - t0) * 1e3, n)
"""

PEER = b'{"peer":"br%05d","state":"ok","epoch":7,"sources":["qkd","mlkem768","x25519"],' \
       b'"tunnel":{"driver":"wireguard-go","interface":"wg0"},"padding":"' + b"x" * 560 + b'"}'


def document(peers: int) -> bytes:
    return b'{"peers":[' + b",".join(PEER % i for i in range(peers)) + b"]}"


def plain_socket_ms(doc: bytes) -> float:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    t0 = time.perf_counter()

    def write() -> None:
        a.sendall(doc)
        a.close()

    writer = threading.Thread(target=write)
    writer.start()
    got = 0
    while chunk := b.recv(1 << 20):
        got += len(chunk)
    writer.join()
    b.close()
    assert got == len(doc)
    return (time.perf_counter() - t0) * 1e3


async def served_ms(doc: bytes, busy_ms: float, busy_tasks: int, rounds: int) -> list[float]:
    stop = asyncio.Event()

    async def busy() -> None:  # holds the loop busy_ms a turn, as a loaded hub does
        while not stop.is_set():
            end = time.perf_counter() + busy_ms / 1e3
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)

    async def provider() -> bytes:
        return doc

    with tempfile.TemporaryDirectory(prefix="qsgw-bench-status-") as tmp:
        path = Path(tmp) / "status.sock"
        server = StatusServer(path, provider)
        await server.start()
        tasks = [asyncio.create_task(busy()) for _ in range(busy_tasks)]
        took = []
        try:
            for _ in range(rounds):
                out = await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-c", CLIENT, str(path)],
                    capture_output=True, check=True, timeout=120)
                ms, size = out.stdout.split()
                took.append(float(ms))
                assert int(size) == len(doc) + 1
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await server.stop()
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10_000)
    parser.add_argument("--busy-ms", type=float, default=5.0)
    parser.add_argument("--busy-tasks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print only the JSON")
    parser.add_argument("--save", type=Path, default=None)
    args = parser.parse_args()
    doc = document(args.peers)
    plain = [plain_socket_ms(doc) for _ in range(args.rounds)]
    idle = asyncio.run(served_ms(doc, 0.0, 0, args.rounds))
    busy = asyncio.run(served_ms(doc, args.busy_ms, args.busy_tasks, args.rounds))
    result = {
        "peers": args.peers, "document_bytes": len(doc),
        "loop_turn_ms": args.busy_ms * args.busy_tasks,
        "status_busy_loop_ms_p50": round(statistics.median(busy), 1),
        "status_idle_loop_ms_p50": round(statistics.median(idle), 1),
        "baseline_plain_socket_ms_p50": round(statistics.median(plain), 1),
        "busy_over_idle": round(statistics.median(busy) / statistics.median(idle), 2),
    }
    text = json.dumps(result, indent=None if args.json else 2)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
