"""A throwaway PostgreSQL server on loopback, for the tests and for trying the shared store.

    python -m tools.local_postgres --port 5433     # runs until Ctrl-C; prints the store URL

Uses the server binaries of the machine (`pg_config --bindir`, else
/usr/lib/postgresql/*/bin; `make system-tools` installs Debian's package
where they are missing). PostgreSQL refuses to run as root, so as root the
server runs as the `postgres` user (or `nobody`) in a data directory of its
own under the system's temporary directory. Password authentication
(scram-sha-256) is on, as in production; the password is written to a file
the gateway reads with `store_password_file`. Durability is traded for
speed (fsync off): this server is for tests and trials, never for data.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

USER = "forecast"
START_TIMEOUT_S = 60.0


def server_bindir() -> Path:
    """The folder with initdb and postgres; RuntimeError naming the fix when there is none."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(found.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major, reverse=True)
    if versions:
        return Path(versions[0]).parent
    raise RuntimeError(
        "no PostgreSQL server binaries (initdb, postgres) found: run `make system-tools` "
        "(apt-get install postgresql) or put pg_config on PATH"
    )


def _major(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


def _run_as() -> tuple[str | None, int | None, int | None]:
    """(user, uid, gid) to run the server as: None when not root."""
    if os.geteuid() != 0:
        return None, None, None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return name, entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root with neither a postgres nor a nobody user")


class LocalPostgres:
    """One server: `start()`, `create_database(name)` -> URL, `stop()`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.password = secrets.token_urlsafe(16)
        self.root = Path(tempfile.mkdtemp(prefix="forecast-pg-"))
        self.password_file = self.root / "password"
        self.log_path = self.root / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        """The store URL of a database on this server (the password is in `password_file`)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Run initdb, start the server, return once it accepts connections."""
        bindir = server_bindir()
        user, uid, gid = _run_as()
        data, sockets = self.root / "data", self.root / "sockets"
        sockets.mkdir()
        self.password_file.write_text(self.password + "\n")
        if uid is not None and gid is not None:
            for path in (self.root, sockets, self.password_file):
                os.chown(path, uid, gid)
        initdb = [
            str(bindir / "initdb"), "-D", str(data), "-U", USER, "-E", "UTF8", "--no-sync",
            "--auth=scram-sha-256", f"--pwfile={self.password_file}",
        ]  # fmt: skip
        done = subprocess.run(initdb, capture_output=True, user=user, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')[-2000:]}")
        command = [
            str(bindir / "postgres"), "-D", str(data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=log, user=user)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_path.read_text()[-2000:]}")
            try:
                with psycopg.connect(self._conninfo("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _conninfo(self, database: str) -> str:
        return f"{self.url(database)}?password={self.password}"

    def create_database(self, name: str) -> str:
        """Create an empty database; its store URL."""
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the data directory."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Run a server until interrupted, with a database `forecast` for the store."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5433)
    args = parser.parse_args(argv)
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # delivered to sigwait below, not handlers
    server = LocalPostgres(args.port)
    server.start()
    url = server.create_database("forecast")
    sys.stdout.write(
        f"PostgreSQL on 127.0.0.1:{args.port}; in another shell:\n"
        f"  FORECAST_STORE_URL={url} FORECAST_STORE_PASSWORD_FILE={server.password_file} "
        "make run\n"
    )
    sys.stdout.flush()
    try:
        signal.sigwait(stops)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
