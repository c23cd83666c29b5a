"""A control-channel proxy that loses one DONE: a fault for the lost-DONE tests.

It forwards the gateways' length-prefixed control frames (daemon/framing.py)
between the initiator and the responder, one upstream connection per
connection it accepts. The `--drop-done`th DONE (the responder's second frame
on a connection: RESP, then DONE) is dropped: both sides of that connection are
closed at once and a line goes to `--marker`; everything else passes untouched. The
responder has then installed the new key (it sends DONE after installing) and
the initiator never hears of it: exactly what a path failure at that moment does.

Run it inside a lab namespace:
    python -m qsgw_lab.doneproxy --listen 127.0.0.1:7900 --to 198.51.100.2:7814 \
        --drop-done 2 --marker FILE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import time
from pathlib import Path

_HEADER = struct.Struct(">I")


class DoneDropper:
    def __init__(self, upstream: tuple[str, int], drop_done: int, marker: Path) -> None:
        self.upstream = upstream
        self.drop_done = drop_done
        self.marker = marker
        self.connections = 0
        self.dones = 0

    async def handle(self, c_reader: asyncio.StreamReader,
                     c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            s_reader, s_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), 10)
        except (OSError, TimeoutError):
            c_writer.close()
            return
        up = asyncio.create_task(self._pipe(c_reader, s_writer))
        try:
            await self._frames_back(s_reader, c_writer, number)
        finally:
            up.cancel()
            for w in (c_writer, s_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 2)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def _frames_back(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           number: int) -> None:
        """Responder -> initiator, frame by frame; the chosen DONE is lost."""
        frame_no = 0
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                header = await reader.readexactly(_HEADER.size)
                (length,) = _HEADER.unpack(header)
                payload = await reader.readexactly(length)
                frame_no += 1
                if frame_no == 2:
                    self.dones += 1
                if frame_no == 2 and self.dones == self.drop_done:
                    with self.marker.open("a") as fh:
                        fh.write(f"{time.time():.3f} dropped DONE {self.dones} ({length} bytes) "
                                 f"on connection {number}\n")
                    return  # ...and both sides are closed
                writer.write(header + payload)
                await writer.drain()


async def _main(args: argparse.Namespace) -> None:
    host, port = args.listen.rsplit(":", 1)
    to_host, to_port = args.to.rsplit(":", 1)
    proxy = DoneDropper((to_host, int(to_port)), args.drop_done, Path(args.marker))
    server = await asyncio.start_server(proxy.handle, host, int(port))
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    p.add_argument("--to", required=True, help="the responder's control HOST:PORT")
    p.add_argument("--drop-done", type=int, default=1,
                   help="which DONE (1 = the first) is lost")
    p.add_argument("--marker", required=True, help="file that gets a line when DONE is lost")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()
