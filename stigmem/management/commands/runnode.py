"""``manage.py runnode``: the one-command start of a node.

Migrates, makes sure the node identity, an admin login, a bootstrap API key and the django-q2
schedules exist, then runs gunicorn and the qcluster as one supervised unit: if either exits,
the other is stopped and runnode exits non-zero (so a service manager restarts the unit);
Ctrl-C or SIGTERM stops both cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from stigmem.bootstrap import ADMIN_USERNAME, ensure_admin_user, ensure_bootstrap_key
from stigmem.node import ensure_identity
from stigmem.schedules import ensure_schedules

STOP_TIMEOUT_S = 20.0


class Command(BaseCommand):
    help = "Migrate, provision on first start, then run the web server and the task cluster."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", default=settings.STIGMEM_BIND, help="host:port (default %(default)s)")
        parser.add_argument("--workers", type=int, default=settings.STIGMEM_WEB_WORKERS, help="web processes")
        parser.add_argument("--threads", type=int, default=settings.STIGMEM_WEB_THREADS, help="threads per web process")
        parser.add_argument("--no-qcluster", action="store_true", help="run the web server only")

    def handle(self, *args, bind: str, workers: int, threads: int, no_qcluster: bool, **options) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        identity = ensure_identity()
        password = ensure_admin_user()
        bootstrap = ensure_bootstrap_key()
        created = ensure_schedules()
        self._banner(identity.node_id, bind, password, bootstrap.issued.raw_key if bootstrap.issued else None, created)

        env = self._child_environment()
        children = {"web": self._start_web(bind, workers, threads, env)}
        if not no_qcluster:
            # Background work (log consumers, deliveries, sweeps) runs at a lower CPU priority:
            # on a small machine a burst of it must not slow the requests (docs/PERFORMANCE.md).
            nice = max(0, min(19, settings.STIGMEM_Q_NICE))
            children["qcluster"] = subprocess.Popen(
                [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "qcluster"],
                env={**env, "STIGMEM_BACKGROUND_PROCESS": "true"},
                start_new_session=True,
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            )
        sys.exit(self._supervise(children))

    def _banner(self, node_id: str, bind: str, password: str | None, raw_key: str | None, schedules: list[str]) -> None:
        lines = [f"stigmem node {node_id}", f"  API:    http://{bind}/v1/facts  (docs: http://{bind}/docs)"]
        lines.append(f"  admin:  http://{bind}/admin/")
        if password:
            lines.append(f"  admin login (shown once): {ADMIN_USERNAME} / {password}")
        if raw_key:
            lines.append(f"  bootstrap API key (shown once): {raw_key}")
        if schedules:
            lines.append(f"  created schedules: {', '.join(schedules)}")
        self.stdout.write("\n".join(lines))
        self.stdout.flush()

    def _child_environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # One fresh directory per run for Prometheus multiprocess samples of every child.
        metrics_dir = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or Path(settings.DATA_DIR) / "prometheus")
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        env.setdefault("DJANGO_SETTINGS_MODULE", "stigmem.settings")
        return env

    def _start_web(self, bind: str, workers: int, threads: int, env: dict[str, str]) -> subprocess.Popen:
        command = [
            sys.executable, "-m", "gunicorn", "stigmem.wsgi:application",
            "--config", "python:stigmem.gunicorn_conf",
            "--bind", bind,
            "--workers", str(workers),
            "--worker-class", "gthread",
            "--threads", str(threads),
            "--graceful-timeout", "15",
            # The control socket lives at one per-user path: two nodes on a host would collide.
            "--no-control-socket",
        ]  # fmt: skip
        if settings.DEBUG:
            # Only then: an access log, even one sent to /dev/null, formats a line per request.
            command += ["--access-logfile", "-"]
        return subprocess.Popen(command, env=env, cwd=settings.BASE_DIR, start_new_session=True)

    def _supervise(self, children: dict[str, subprocess.Popen]) -> int:
        stopping = False

        def request_stop(signum: int, frame) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        exit_code = 0
        while not stopping:
            exited = {name: proc.returncode for name, proc in children.items() if proc.poll() is not None}
            if exited:
                self.stderr.write(f"runnode: {', '.join(f'{n} exited ({c})' for n, c in exited.items())}; stopping")
                exit_code = 1
                break
            time.sleep(0.2)
        self._stop(children)
        if exit_code == 0:
            self.stdout.write("runnode: stopped")
        return exit_code

    def _stop(self, children: dict[str, subprocess.Popen]) -> None:
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for name, proc in children.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"runnode: {name} did not stop in {STOP_TIMEOUT_S:.0f}s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
