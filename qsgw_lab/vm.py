"""One qsgw appliance under qemu: its disks, its tap, its console and its report channel.

The root is the image's squashfs, shared read-only by every VM; each VM gets a
state disk (ext4, label QSGW-STATE) and, when provisioned, a config drive (ext4,
label QSGW-CONFIG), both made with `mke2fs -d` (no loop device, no mount). The
NIC is a tap on the lab's bridge; what the appliance reports (image/rootfs/
usr/lib/qsgw/report) arrives as JSON lines over a one-way virtio-serial port,
and the serial console goes to a file. qemu runs in its own process group,
ended (and its tap removed) by stop() and by the lab's close.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qsgw_lab.netns import NetnsLab

__all__ = ["REPO", "ApplianceVM", "VmError", "accel", "image_dir"]

REPO = Path(__file__).resolve().parent.parent
REPORT_PORT = "org.qsgw.report"
Report = dict[str, Any]


class VmError(RuntimeError):
    pass


def image_dir() -> Path:
    """Where `make image` leaves the image (QSGW_IMAGE_DIR overrides)."""
    return Path(os.environ.get("QSGW_IMAGE_DIR", REPO / "build" / "image"))


@functools.cache
def accel() -> str:
    """`kvm` where a KVM guest really boots the image's kernel, else `tcg`;
    QSGW_VM_ACCEL forces either. On these build machines /dev/kvm exists, yet one
    host's guests abort at their first MSR write and another's hang in the kernel's
    real-mode setup ("Probing EDD") with a silent console: so neither the device
    nor a guest that stays up proves anything, only the kernel's first line does."""
    forced = os.environ.get("QSGW_VM_ACCEL")
    if forced:
        return forced
    return "kvm" if _kvm_boots(image_dir() / "vmlinuz") else "tcg"


KERNEL_BANNER = b"Linux version "


def _kvm_boots(kernel: Path, probe_s: float = 15.0) -> bool:
    """Whether `kernel` under KVM prints its banner on the serial console within probe_s."""
    if (not kernel.exists() or not os.access("/dev/kvm", os.R_OK | os.W_OK)
            or shutil.which("qemu-system-x86_64") is None):
        return False
    with tempfile.TemporaryDirectory(prefix="qsgw-kvm-") as tmp:
        console = Path(tmp) / "console.log"
        # No initrd and no root: a kernel that boots panics, and panic=-1 with
        # -no-reboot ends qemu; we stop at the banner long before that anyway.
        proc = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "q35", "-accel", "kvm", "-cpu", "host",
             "-m", "256", "-nodefaults", "-display", "none", "-monitor", "none",
             "-no-reboot", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
             "-serial", f"file:{console}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + probe_s
            while time.monotonic() < deadline:
                if console.exists() and KERNEL_BANNER in console.read_bytes():
                    return True
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
            return console.exists() and KERNEL_BANNER in console.read_bytes()
        finally:
            proc.kill()
            proc.wait(timeout=10)


def make_ext4(path: Path, label: str, content: Path, size_mb: int) -> None:
    """An ext4 image of `content` (mke2fs -d: no loop device, nothing mounted)."""
    path.unlink(missing_ok=True)
    with path.open("wb") as fh:
        fh.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-d", str(content),
                    str(path)], check=True, capture_output=True, timeout=60)


class ApplianceVM:
    def __init__(self, lab: NetnsLab, ns: str, name: str, workdir: Path, index: int,
                 memory_mb: int = 768) -> None:
        self.lab = lab
        self.ns = ns
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.index = index
        self.mac = f"52:54:00:17:00:{index:02x}"
        self.machine_id = hashlib.sha256(f"qsgw-vm {name}".encode()).hexdigest()[:32]
        self.tap = lab.unique(f"tap{index}")
        self.memory_mb = memory_mb
        self.state_disk = self.dir / "state.img"
        self.config_drive: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._offset = 0
        self.reports: list[Report] = []

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def report_file(self) -> Path:
        return self.dir / "report.jsonl"

    # -- disks -------------------------------------------------------------

    def make_state_disk(self, size_mb: int = 96) -> None:
        empty = self.dir / "state-skel"
        empty.mkdir(exist_ok=True)
        make_ext4(self.state_disk, "QSGW-STATE", empty, size_mb)

    def make_config_drive(self, files: Mapping[str, tuple[bytes, int]]) -> None:
        """files: path on the drive -> (content, mode)."""
        tree = self.dir / "config-tree"
        shutil.rmtree(tree, ignore_errors=True)
        for rel, (content, mode) in files.items():
            dest = tree / rel
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            dest.write_bytes(content)
            dest.chmod(mode)
        self.config_drive = self.dir / "config.img"
        make_ext4(self.config_drive, "QSGW-CONFIG", tree, 16)

    # -- power -------------------------------------------------------------

    def argv(self, image: Path) -> list[str]:
        manifest = json.loads((image / "manifest.json").read_text())
        drives = [f"file={image / 'rootfs.squashfs'},format=raw,if=virtio,readonly=on",
                  f"file={self.state_disk},format=raw,if=virtio"]
        if self.config_drive is not None:
            drives.append(f"file={self.config_drive},format=raw,if=virtio,readonly=on")
        argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", accel(),
                "-m", str(self.memory_mb), "-smp", "1", "-display", "none", "-monitor", "none",
                "-no-reboot", "-kernel", str(image / "vmlinuz"),
                "-initrd", str(image / "initrd.img"),
                # A stable machine ID, as an appliance's boot loader passes it: the
                # journal on the state disk is then one machine's across boots.
                "-append", f"{manifest['cmdline']} panic=-1 systemd.hostname={self.name} "
                f"systemd.machine_id={self.machine_id}",
                "-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}",
                "-chardev", f"file,id=rep,path={self.report_file}",
                "-device", "virtio-serial-pci",
                "-device", f"virtserialport,chardev=rep,name={REPORT_PORT}",
                "-serial", f"file:{self.console}"]
        if accel() == "kvm":
            argv += ["-cpu", "host"]
        for d in drives:
            argv += ["-drive", d]
        return argv

    def start(self, image: Path | None = None, bridge: str = "br0") -> None:
        image = image or image_dir()
        if not (image / "rootfs.squashfs").exists():
            raise VmError(f"no image in {image}: run `make image`")
        self.lab.run(self.ns, ["ip", "tuntap", "add", self.tap, "mode", "tap"], check=True)
        self.lab.run(self.ns, ["ip", "link", "set", self.tap, "master", bridge, "up"],
                     check=True)
        self.report_file.unlink(missing_ok=True)
        self._offset = 0
        self.reports = []
        log = (self.dir / "qemu.log").open("ab")
        self.started_at = time.monotonic()
        self.proc = self.lab.popen(self.ns, self.argv(image), stdout=log,
                                   stderr=subprocess.STDOUT)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Power off at once (a power cut: what persists must already be on disk)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)
        self.proc = None
        self.lab.run(self.ns, ["ip", "link", "del", self.tap])

    # -- what the appliance says -------------------------------------------

    def poll(self) -> list[Report]:
        """New complete report lines since the last poll."""
        if self.proc is not None and self.proc.poll() is not None:
            raise VmError(f"{self.name}: qemu exited {self.proc.returncode}; "
                          f"see {self.dir / 'qemu.log'} and {self.console}")
        try:
            with self.report_file.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        new = []
        for line in data[:end].splitlines():
            try:
                new.append(json.loads(line))
            except ValueError:
                continue  # the port can carry noise before the reporter opens it
        self.reports += new
        return new

    def latest(self) -> Report | None:
        self.poll()
        return self.reports[-1] if self.reports else None

    def wait_report(self, predicate: Callable[[Report], bool], timeout_s: float,
                    what: str) -> Report:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for rep in self.poll():
                if predicate(rep):
                    return rep
            time.sleep(0.5)
        raise VmError(f"{self.name}: not {what} within {timeout_s:.0f} s; "
                      f"{self.diagnosis()}")

    def diagnosis(self) -> str:
        """What a failed wait shows: the last report's unit states, status and the
        daemon's last 30 journal lines (a fresh root's run directory is gone after),
        then the serial console's tail."""
        last = self.reports[-1] if self.reports else None
        if last is None:
            head = "no report"
        else:
            keep = ("uptime_s", "units", "qsgw_unit", "status", "ping")
            head = "last report: " + json.dumps({k: last.get(k) for k in keep})[:3000]
            head += "\n--- qsgw journal ---\n" + str(last.get("qsgw_log", ""))
            head += "\n--- provision ---\n" + str(last.get("console", ""))[-1000:]
        return f"{head}\n--- console {self.console} (tail) ---\n{self.console_text()[-2000:]}"

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""
