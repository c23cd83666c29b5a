"""A throwaway PostgreSQL server for tests, labs and benchmarks: initdb + postgres as the
unprivileged `postgres` user (CI runs as root, and postgres refuses to), in a temp dir.

The data dir and the unix socket live in the temp dir; TCP listens on the given
address only (loopback, or an address inside a lab namespace). The role `qsgw`
logs in with a scram-sha-256 password written to a 0600 file (what the gateway's
journal.password_file points at); the socket is trusted for the superuser set-up.
stop() and start() again keep the data (the tests' "database down" case).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PG_USER = "postgres"


class PgServerError(RuntimeError):
    pass


def _process_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def pg_bindir() -> Path | None:
    """Where initdb/pg_ctl/postgres are: PATH, else Debian's /usr/lib/postgresql/NN/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return Path(dirs[-1]) if dirs and Path(dirs[-1], "initdb").exists() else None


def _as_postgres(argv: Sequence[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *argv]
    return list(argv)


class PgServer:
    """One cluster: start(), conninfo(), stop(), close() (removes everything)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 55432,
                 popen: Callable[[Sequence[str]], subprocess.Popen[Any]] | None = None,
                 synchronous_commit: str = "on", allow: str | None = None,
                 settings: dict[str, str] | None = None,
                 replica_of: PgServer | None = None, name: str = "pg_a") -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise PgServerError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.host, self.port = host, port
        self._popen = popen or (lambda argv: subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, start_new_session=True))
        self.base = Path(tempfile.mkdtemp(prefix="qsgw-pg-"))
        self.data = self.base / "data"
        self.sockdir = self.base / "sock"
        self.password_file = self.base / "qsgw.password"
        self.synchronous_commit = synchronous_commit
        self.allow = allow  # a client network (CIDR) allowed in with the password
        self.proc: subprocess.Popen[Any] | None = None
        self.settings = dict(settings or {})
        self.name = name  # a replica's application_name (synchronous_standby_names)
        self.replica_of = replica_of
        # A replica is a copy: the same roles, so the same password.
        self._password: str = (replica_of.password if replica_of
                               else secrets.token_urlsafe(18))
        try:
            self._initdb()
        except BaseException:
            self.close()
            raise

    def _initdb(self) -> None:
        uid = gid = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PG_USER)
            uid, gid = entry.pw_uid, entry.pw_gid
            os.chown(self.base, uid, gid)
        os.chmod(self.base, 0o700)
        self.sockdir.mkdir(mode=0o700)
        if uid is not None and gid is not None:
            os.chown(self.sockdir, uid, gid)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._password + "\n")
        if self.replica_of is not None:
            self._basebackup(self.replica_of)
            return
        res = subprocess.run(_as_postgres([
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_USER,
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"]),
            capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            raise PgServerError(f"initdb failed: {res.stderr.strip()[-500:]}")
        if self.allow is not None:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host qsgw qsgw {self.allow} scram-sha-256\n")

    def _basebackup(self, primary: PgServer) -> None:
        """A streaming replica of `primary` (standby.signal), named for its sync setting."""
        source = f"host={primary.sockdir} port={primary.port} user={PG_USER}"
        res = subprocess.run(_as_postgres([
            str(self.bindir / "pg_basebackup"), "-d", source, "-D", str(self.data), "-R",
            "-X", "stream", "--no-sync", "--checkpoint=fast"]), capture_output=True, text=True,
            timeout=120,
            check=False)
        if res.returncode != 0:
            raise PgServerError(f"pg_basebackup failed: {res.stderr.strip()[-500:]}")
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"primary_conninfo = '{source} application_name={self.name}'\n")

    def promote(self, timeout_s: float = 30.0) -> None:
        """The replica becomes the primary (pg_ctl promote), once it accepts writes."""
        res = subprocess.run(_as_postgres([str(self.bindir / "pg_ctl"), "promote", "-w",
                                           "-D", str(self.data)]),
                             capture_output=True, text=True, timeout=timeout_s, check=False)
        if res.returncode != 0:
            raise PgServerError(f"promote failed: {res.stderr.strip()}")

    def kill(self) -> None:
        """SIGKILL the server (the primary is lost, no shutdown checkpoint)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def freeze(self, frozen: bool) -> None:
        """SIGSTOP (frozen) or SIGCONT every process of the server, as on a hung host:
        its sockets stay open and the kernel still ACKs, but nothing answers. The
        backends are sessions of their own, so the whole process tree, not a group."""
        if self.proc is None:
            return
        sig = signal.SIGSTOP if frozen else signal.SIGCONT
        for pid in _process_tree(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def start(self, timeout_s: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        log = self.base / "postgres.log"
        argv = _as_postgres([
            str(self.bindir / "postgres"), "-D", str(self.data), "-k", str(self.sockdir),
            "-p", str(self.port), "-c", f"listen_addresses={self.host}",
            "-c", f"synchronous_commit={self.synchronous_commit}",
            "-c", "fsync=on", "-c", "shared_buffers=16MB", "-c", "max_connections=40",
            "-c", "logging_collector=off", "-c", "log_min_messages=warning",
            *(a for k, v in self.settings.items() for a in ("-c", f"{k}={v}"))])
        # postgres writes its log to stderr; sh keeps it in the temp dir.
        self.proc = self._popen(["sh", "-c", 'exec "$@" 2>>"$0"', str(log), *argv])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
                raise PgServerError(f"postgres exited {self.proc.returncode}: {tail}")
            if self._ready():
                if self.replica_of is None:
                    self._make_role()
                return
            time.sleep(0.1)
        raise PgServerError(f"postgres not ready within {timeout_s:g} s")

    def _psql(self, sql: str, db: str = "postgres") -> subprocess.CompletedProcess[str]:
        return subprocess.run(_as_postgres([
            str(self.bindir / "psql"), "-h", str(self.sockdir), "-p", str(self.port),
            "-U", PG_USER, "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtc", sql]),
            capture_output=True, text=True, timeout=30, check=False)

    def _ready(self) -> bool:
        return self._psql("SELECT 1").returncode == 0

    def _make_role(self) -> None:
        if self._psql("SELECT 1 FROM pg_roles WHERE rolname='qsgw'").stdout.strip() == "1":
            return
        pw = self._password.replace("'", "''")
        for sql in (f"CREATE ROLE qsgw LOGIN PASSWORD '{pw}'", "CREATE DATABASE qsgw OWNER qsgw"):
            res = self._psql(sql)
            if res.returncode != 0:
                raise PgServerError(f"{sql.split(' PASSWORD')[0]}: {res.stderr.strip()}")

    def configure(self, name: str, value: str) -> None:
        """ALTER SYSTEM SET name = 'value', then reload (e.g. synchronous_standby_names)."""
        quoted = value.replace("'", "''")
        for sql in (f"ALTER SYSTEM SET {name} = '{quoted}'", "SELECT pg_reload_conf()"):
            res = self._psql(sql)
            if res.returncode != 0:
                raise PgServerError(f"{sql}: {res.stderr.strip()}")

    @property
    def password(self) -> str:
        return self._password

    def conninfo(self) -> str:
        """The DSN a gateway uses (no password: that is in password_file)."""
        return f"host={self.host} port={self.port} dbname=qsgw user=qsgw"

    def query(self, sql: str) -> list[list[str]]:
        """Rows of a query in the qsgw database, as text (the tests' view of the DB)."""
        res = self._psql(sql, db="qsgw")
        if res.returncode != 0:
            raise PgServerError(res.stderr.strip())
        return [line.split("|") for line in res.stdout.splitlines() if line]

    def stop(self, timeout_s: float = 20.0) -> None:
        """Fast shutdown (SIGINT): clients are cut off at once, the data stays."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self.proc = None
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
