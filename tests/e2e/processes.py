"""Real node processes for end-to-end tests: start them on 127.0.0.1, talk HTTP, kill whole process groups.

Every process runs in a session of its own (``start_new_session``) so a test can SIGKILL one part
of a node, and its children, without touching the rest; ``kill`` is safe to call in ``finally``.
Subprocesses never inherit ``DATABASE_URL`` or ``STIGMEM_*``: each node gets its own SQLite
database in its data directory, also during the PostgreSQL pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def process_table() -> list[dict]:
    rows = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        rows.append(
            {
                "pid": int(entry.name),
                "state": fields[0],
                "ppid": int(fields[1]),
                "pgrp": int(fields[2]),
                "nice": int(fields[16]),
                "cmd": cmdline,
            }
        )
    return rows


def live_in_groups(groups: set[int]) -> list[dict]:
    return [p for p in process_table() if p["pgrp"] in groups and p["state"] not in ("Z", "X")]


def http(method: str, url: str, *, key: str | None = None, body: dict | None = None, timeout: float = 10):
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_until(predicate, timeout: float, what: str, log=lambda: "", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")


def node_env(data_dir: Path, url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STIGMEM_")
        and k not in {"DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="stigmem.settings",
        STIGMEM_DATA_DIR=str(data_dir),
        STIGMEM_NODE_URL=url,
        STIGMEM_Q_WORKERS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Proc:
    """One command in a session of its own, output to files in ``log_dir``."""

    def __init__(self, argv: list[str], env: dict[str, str], log_dir: Path, name: str):
        self.argv = argv
        self.env = env
        self.name = name
        self.out_path = log_dir / f"{name}.stdout"
        self.err_path = log_dir / f"{name}.stderr"
        self.groups: set[int] = set()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=BASE_DIR,
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.groups = {self.proc.pid}

    def stdout(self) -> str:
        return self.out_path.read_text() if self.out_path.exists() else ""

    def log(self) -> str:
        err = self.err_path.read_text()[-4000:] if self.err_path.exists() else ""
        return f"--- {self.name} stdout ---\n{self.stdout()[-4000:]}\n--- {self.name} stderr (tail) ---\n{err}"

    def children(self) -> list[dict]:
        return [p for p in process_table() if p["ppid"] == self.proc.pid]

    def kill(self) -> None:
        """SIGKILL every process group this process made; idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.groups |= {p["pgrp"] for p in self.children()}
        for group in self.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


class Node(Proc):
    """One ``runnode`` process with its own data directory; always cleaned up by ``stop``/``kill``."""

    def __init__(self, data_dir: Path, name: str, *runnode_args: str, **extra_env: str):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "manage.py", "runnode", "--bind", f"127.0.0.1:{self.port}", "--workers", "2"]
        super().__init__([*argv, *runnode_args], node_env(data_dir, self.url, **extra_env), data_dir, name)

    def wait_healthy(self) -> dict:
        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"runnode exited early ({self.proc.returncode})\n{self.log()}")
            try:
                status, body = http("GET", f"{self.url}/healthz", timeout=2)
            except OSError:
                return None
            return body if status == 200 else None

        body = wait_until(healthy, 120, "/healthz", self.log)
        # runnode starts each child in a session (and process group) of its own.
        self.groups |= {p["pgrp"] for p in self.children()}
        return body

    def bootstrap_key(self) -> str:
        """The admin API key the first start prints once."""
        out = wait_until(lambda: "bootstrap API key" in self.stdout() and self.stdout(), 30, "banner", self.log)
        match = re.search(r"bootstrap API key \(shown once\): (\S+)", out)
        assert match, out
        return match.group(1)

    def manage(self, name: str, *args: str) -> Proc:
        """Another ``manage.py`` command of this node (same data directory and settings), not started."""
        return Proc([sys.executable, "manage.py", *args], self.env, self.data_dir, name)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"runnode did not exit after SIGINT\n{self.log()}") from None


def manage_shell(env: dict[str, str], code: str, **extra_env: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=BASE_DIR,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
