"""A throwaway stigmem node for the benchmark: ``manage.py runnode`` in a temporary data dir.

The node binds a free port on 127.0.0.1, its SQLite database and secret live in a temporary
``STIGMEM_DATA_DIR`` (never the repository's ``var/``), and it is always stopped: SIGINT to
runnode first, then SIGKILL to the process groups of runnode and of the children it started.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEY_LINE = re.compile(r"bootstrap API key \(shown once\): (\S+)")
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_environment(data_dir: Path, database_url: str | None, port: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("DATABASE_URL", "STIGMEM_DB_PATH", "STIGMEM_BIND", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    env["STIGMEM_DATA_DIR"] = str(data_dir)
    env["STIGMEM_NODE_URL"] = f"http://127.0.0.1:{port}"
    env["DJANGO_SETTINGS_MODULE"] = "stigmem.settings"
    env["PYTHONUNBUFFERED"] = "1"
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def _children(pid: int) -> list[int]:
    try:
        raw = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in raw.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class BenchNode:
    def __init__(
        self,
        data_dir: Path,
        *,
        database_url: str | None = None,
        workers: int | None = None,
        threads: int | None = None,
        qcluster: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.host = "127.0.0.1"
        self.env = node_environment(data_dir, database_url, self.port)
        self.env.update(extra_env or {})
        self.workers = workers
        self.threads = threads
        self.qcluster = qcluster
        self.proc: subprocess.Popen | None = None
        self.api_key: str | None = None
        self._groups: set[int] = set()
        self.log_path = data_dir / "runnode.log"
        self.url = f"http://{self.host}:{self.port}"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        command = [
            sys.executable, str(REPO / "manage.py"), "runnode",
            "--bind", f"{self.host}:{self.port}",
        ]  # fmt: skip
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        if self.threads is not None:
            command += ["--threads", str(self.threads)]
        if not self.qcluster:
            command.append("--no-qcluster")
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._groups.add(self.proc.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.api_key is None:
            self._check_alive()
            match = KEY_LINE.search(self.log_path.read_text(errors="replace"))
            if match:
                self.api_key = match.group(1)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"node printed no bootstrap key in {START_TIMEOUT_S:.0f}s; see {self.log_path}")
            time.sleep(0.1)
        while not self._healthy():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"node not healthy in {START_TIMEOUT_S:.0f}s; see {self.log_path}")
            time.sleep(0.1)
        # Let every gunicorn worker come up before measuring anything.
        expected = self.web_settings()["workers"]
        while len(self.web_worker_pids()) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        self._remember_groups()

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"runnode exited with {self.proc.returncode}:\n{tail}")

    def _healthy(self) -> bool:
        try:
            status, _ = self.request("GET", "/healthz", auth=False, timeout=2)
        except OSError:
            return False
        return status == 200

    def _remember_groups(self) -> None:
        # runnode starts gunicorn and the qcluster in sessions of their own.
        if self.proc is not None:
            self._groups.update(_children(self.proc.pid))

    def stop(self) -> None:
        """SIGINT to runnode (it stops its children); SIGKILL whatever of ours is left."""
        if self.proc is None:
            return
        self._remember_groups()
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
        finally:
            for group in sorted(self._groups):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
            if self.proc.poll() is None:
                self.proc.wait(timeout=10)

    def __enter__(self) -> BenchNode:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- introspection ----------------------------------------------------------------------

    def gunicorn_master_pid(self) -> int | None:
        if self.proc is None:
            return None
        for pid in _children(self.proc.pid):
            if "gunicorn" in _cmdline(pid):
                return pid
        return None

    def web_settings(self) -> dict[str, int]:
        """Workers and threads as gunicorn was actually started (runnode's defaults included)."""
        master = self.gunicorn_master_pid()
        args = _cmdline(master).split() if master else []
        found = {"workers": 0, "threads": 0}
        for name in found:
            if f"--{name}" in args:
                found[name] = int(args[args.index(f"--{name}") + 1])
        return found

    def tree_pids(self) -> list[int]:
        """runnode and every process below it (gunicorn master and workers, qcluster)."""
        if self.proc is None:
            return []
        pids, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo.extend(_children(pid))
        return pids

    def web_worker_pids(self) -> list[int]:
        master = self.gunicorn_master_pid()
        return _children(master) if master else []

    # --- HTTP ---------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: dict | None = None, *, auth: bool = True, timeout: float = 30
    ) -> tuple[int, dict | None]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if auth:
                headers["Authorization"] = f"Bearer {self.api_key}"
            conn.request(method, path, json.dumps(body).encode() if body is not None else None, headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None)
        finally:
            conn.close()

    def create_keys(self, count: int, permissions: list[str]) -> list[str]:
        """One API key per simulated client (rate limits are per key, like real agents)."""
        keys = []
        for i in range(count):
            status, body = self.request(
                "POST",
                "/v1/auth/keys",
                {"entity_uri": f"stigmem://bench/agent/client-{i}", "permissions": permissions},
            )
            if status != 201 or not body:
                raise RuntimeError(f"creating a bench key failed: {status} {body}")
            keys.append(body["api_key"])
        return keys
