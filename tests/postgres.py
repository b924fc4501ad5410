"""A real PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary folder, on 127.0.0.1 and a free port.

Debian's ``postgresql`` package provides the binaries (``/usr/lib/postgresql/<version>/bin``); tests that need the
server skip, saying why, only where they are absent. PostgreSQL refuses to run as root, so under root the server
runs as the ``postgres`` system user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.binaries import require_binaries


def find_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl (PATH first, then Debian's versioned folders), or None."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(cand) / "initdb").is_file() and (Path(cand) / "pg_ctl").is_file():
            return Path(cand)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throw-away cluster; ``url(db)`` gives a SQLAlchemy URL, ``stop()``/``start()`` simulate an outage."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.user = None
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and no 'postgres' user exists to run the server") from None
            self.user = "postgres"
            self._uid, self._gid = pw.pw_uid, pw.pw_gid
        # not under pytest's tmp folder: that is private to root, and the server may run as another user
        self.root = Path(tempfile.mkdtemp(prefix="covidscreen-pg-"))
        if self.user:
            os.chown(self.root, self._uid, self._gid)
        self.data = self.root / "data"
        self.port = free_port()
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C",
                   "--no-sync"])

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=check, user=self.user,
                              cwd=self.root)

    def start(self) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                "-c fsync=off -c max_connections=50")
        res = self._run(["pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "server.log"), "-w",
                         "-t", "600", "start"], check=False)
        if res.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {res.stderr}\n{log}")

    def stop(self) -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"], check=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def postgres_fixture():
    """Body of a session fixture: yields a started :class:`PostgresServer`, or skips saying why."""
    bin_dir = find_bin_dir()
    require_binaries(bin_dir is not None, "PostgreSQL binaries (initdb, pg_ctl) not found: install Debian's "
                     "postgresql package (scripts/apt.d/serving.txt) to run the audit log against a real server")
    server = PostgresServer(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.close()
