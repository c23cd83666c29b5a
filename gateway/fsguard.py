"""Strict files: directories nobody else can write, secrets owned by us, no symlinks followed.

The daemon runs as root; a directory others can write, or a symlink where the
journal or the audit trail should be, lets another user swap, delete or
redirect our evidence and state. Each refusal names the file and the fix.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class FileSafetyError(Exception):
    """A file or directory the daemon refuses to use; the message says the fix."""


def check_dir(path: Path, what: str) -> None:
    """`path` (if it exists) is a real directory, owned by us or root, that group
    and others cannot write."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise FileSafetyError(f"{what} {path} is a symlink; refusing to follow it: "
                              f"point the config at the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise FileSafetyError(f"{what} {path} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise FileSafetyError(f"{what} {path} is mode {mode:04o}, writable by group/others: "
                              f"run chmod go-w {path} (0700 is usual)")
    if st.st_uid not in (os.geteuid(), 0):
        raise FileSafetyError(f"{what} {path} is owned by uid {st.st_uid}, not by the daemon's "
                              f"user (uid {os.geteuid()}): run chown {os.geteuid()} {path}")


def check_secret(path: Path, st: os.stat_result | None = None) -> None:
    """A secret file: a regular file, owned by the daemon's user, 0600 or stricter."""
    st = st if st is not None else os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise FileSafetyError(f"{path} is a symlink; refusing to follow it: put the file itself "
                              "there")
    if not stat.S_ISREG(st.st_mode):
        raise FileSafetyError(f"{path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise FileSafetyError(f"{path} is mode {mode:04o}, accessible by group/others; it holds "
                              f"a secret: run chmod 600 {path}")
    if st.st_uid != os.geteuid():
        raise FileSafetyError(f"{path} is owned by uid {st.st_uid}, not by the daemon's user "
                              f"(uid {os.geteuid()}): run chown {os.geteuid()} {path}")


def reject_symlink(path: Path) -> None:
    """Refuse a symlink at `path` (a missing path is fine: it will be created)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise FileSafetyError(f"{path} is a symlink; refusing to follow it: remove it "
                              "(the daemon creates the file itself)")


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """os.open that never follows a symlink at the last component."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileSafetyError(f"{path} is a symlink; refusing to follow it: remove it "
                                  "(the daemon creates the file itself)") from None
        raise


def write_private_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` (0600) through a temporary file, fsynced, then renamed
    over it: a reader sees the old or the new file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_secret(path: Path) -> bytes:
    """Read a secret file without following a symlink, after `check_secret`."""
    fd = open_nofollow(path, os.O_RDONLY)
    try:
        check_secret(path, os.fstat(fd))
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
