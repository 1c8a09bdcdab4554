"""A throwaway PostgreSQL server for tests: the distribution's binaries (tools/ensure-postgres.sh
installs them), a fresh data directory in a temporary folder, TCP on a free loopback port,
trust authentication, no unix socket, fsync off (nothing here outlives the test).

initdb and postgres refuse to run as root. As root, the server runs as the `postgres` user
the Debian package creates (or `nobody`): the data directory is made theirs and the
processes are started with `subprocess`'s `user=`/`group=`. Otherwise as the current user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from simulation.broker import free_loopback_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
SERVICE_USERS = ("postgres", "nobody")


def find_bin_dir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: PATH first, then the newest
    /usr/lib/postgresql/*/bin (Debian keeps them off PATH)."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name)
                        if Path(p).parent.parent.name.isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.port = free_loopback_port()
        self._tmp = tempfile.mkdtemp(prefix="dermtwin-pg-")
        self.data_dir = Path(self._tmp) / "data"
        self.log_path = Path(self._tmp) / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._run_as: dict = {}
        if os.geteuid() == 0:
            for name in SERVICE_USERS:
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self._run_as = {"user": entry.pw_uid, "group": entry.pw_gid}
                break
            else:
                raise RuntimeError("running as root and no postgres or nobody user to run "
                                   "PostgreSQL as")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(mode=0o700)
        if self._run_as:
            os.chmod(self._tmp, 0o755)   # the service user must reach its data directory
            for path in (self.data_dir,):
                os.chown(path, self._run_as["user"], self._run_as["group"])
            self.log_path.touch()
            os.chown(self.log_path, self._run_as["user"], self._run_as["group"])

    def start(self) -> None:
        self._prepare_dir()
        subprocess.run([str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                        "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
                       check=True, capture_output=True, env=self._env, cwd=self._tmp,
                       **self._run_as)
        self.start_server()

    @property
    def _env(self) -> dict[str, str]:
        return {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def start_server(self) -> None:
        """Start postgres on the data directory (again, after `stop_server`), same port."""
        log = open(self.log_path, "ab")   # noqa: SIM115  # closed in stop_server()
        self._log = log
        self._process = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
             "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=20"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._env,
            cwd=self._tmp, **self._run_as)
        self.wait_ready()

    def wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}: "
                                   f"{self.log_tail()}")
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready in {START_TIMEOUT_S} s: "
                                       f"{self.log_tail()}") from None
                time.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop_server(self) -> None:
        """Fast shutdown (SIGINT: open sessions are ended); the data directory stays."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self.stop_server()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
