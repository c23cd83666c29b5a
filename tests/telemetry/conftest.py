"""A real mosquitto on loopback for the telemetry tests: TLS (CA and server
certificate made here), a password file, no anonymous access."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _requires import require

from kms_client.sim.pki import ensure_pki

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def make_pki(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (the simulator's test PKI):
    returns (ca, cert, key), the key 0600."""
    pki = ensure_pki(d, kme_ids=["127.0.0.1"], sae_ids=[], hosts=["127.0.0.1"])
    pair = pki.kmes["127.0.0.1"]
    return pki.ca_cert, pair.cert, pair.key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    port: int
    ca_file: Path
    username: str
    password_file: Path  # the client's copy: just the password
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    require("mosquitto", "mosquitto_passwd")
    d = tmp_path / "mosquitto"
    d.mkdir()
    ca, cert, key = make_pki(d)
    user, password = "gw", secrets.token_urlsafe(16)
    passwd = d / "passwd"
    subprocess.run(
        [MOSQUITTO_PASSWD, "-c", "-b", str(passwd), user, password],
        check=True,
        capture_output=True,
        timeout=30,
    )
    client_pw = d / "client.password"
    fd = os.open(client_pw, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    port = free_port()
    log = d / "mosquitto.log"
    conf = d / "mosquitto.conf"
    conf.write_text(
        f"user root\nper_listener_settings false\npersistence false\n"
        f"log_dest file {log}\nlog_type all\n"
        f"allow_anonymous false\npassword_file {passwd}\n"
        f"listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
        "require_certificate false\n"
    )
    b = Broker(port, ca, user, client_pw, conf, log)
    try:
        b.start()
        yield b
    finally:
        b.stop()
