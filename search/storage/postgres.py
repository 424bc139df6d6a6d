"""A PostgreSQL cluster of the study's own under ``<results_dir>/postgres/`` (``study.storage=postgresql``).

``LocalPostgres`` needs Debian's ``postgresql`` package (``initdb``, ``pg_ctl``), no service and no root: the cluster
listens on 127.0.0.1 at a free port, trusts local connections, and is stopped again by the command that started it.
Run as root, the server runs as the ``postgres`` user (PostgreSQL refuses root).
"""
from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER, DATABASE = "search", "search"


def _bin(program: str) -> str:
    found = shutil.which(program) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{program}"), reverse=True)), None)
    if found is None:
        raise ValueError(f"study.storage=postgresql: {program} not found; install PostgreSQL (Debian: apt-get install "
                         "-y postgresql) or give a server's URL, postgresql+psycopg://user@host:5432/db")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """A PostgreSQL cluster in ``folder`` (data in ``folder/data``, its port in ``folder/port``, its log in
    ``folder/server.log``), started on demand on 127.0.0.1."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self.data = self.folder / "data"

    def _as_server(self, *args: str) -> subprocess.CompletedProcess:
        """Run a PostgreSQL program (as ``postgres`` when this is root). Its output goes through a file, not a
        pipe: a server it starts keeps its inherited descriptors, and a pipe would never close."""
        cmd = list(args)
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                  check=False)
            out.seek(0)
            return subprocess.CompletedProcess(cmd, done.returncode, out.read(), "")

    def _owned(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in [path, *path.rglob("*")]:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    @property
    def port(self) -> int | None:
        path = self.folder / "port"
        return int(path.read_text()) if path.is_file() else None

    def running(self) -> bool:
        return self.data.is_dir() and self._as_server(_bin("pg_ctl"), "status", "-D", str(self.data)).returncode == 0

    def url(self) -> str:
        """The cluster's URL, started first if it is not running (and stopped at exit by this process then)."""
        if not self.running():
            self.start()
            atexit.register(self.stop)
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # the server's user must reach its folder
            self.folder.chmod(self.folder.stat().st_mode | 0o055)
        if not (self.data / "PG_VERSION").is_file():
            self.data.mkdir(parents=True, exist_ok=True)
            self._owned(self.data)
            done = self._as_server(_bin("initdb"), "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8",
                                   "--no-instructions")
            if done.returncode:
                raise ValueError(f"study.storage=postgresql: initdb failed in {self.data}: "
                                 f"{(done.stderr or done.stdout).strip().splitlines()[-1]}")
        port = _free_port()
        (self.folder / "port").write_text(str(port))
        logfile = self.folder / "server.log"
        logfile.touch()
        self._owned(logfile)
        done = self._as_server(_bin("pg_ctl"), "start", "-D", str(self.data), "-l", str(logfile), "-w", "-t", "60",
                               "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''")
        if done.returncode:
            raise ValueError(f"study.storage=postgresql: the server did not start (see {logfile}): "
                             f"{(done.stderr or done.stdout).strip().splitlines()[-1]}")
        self._database(port)

    def _database(self, port: int) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def restart(self) -> None:
        """Stop and start again on the same port (a server restart, as workers would meet it)."""
        done = self._as_server(_bin("pg_ctl"), "restart", "-D", str(self.data), "-m", "fast", "-w", "-t", "60",
                               "-l", str(self.folder / "server.log"))
        if done.returncode:
            raise RuntimeError(f"pg_ctl restart failed: {done.stderr or done.stdout}")

    def stop(self) -> None:
        if self.running():
            self._as_server(_bin("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
