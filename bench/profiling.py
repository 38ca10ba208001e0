"""Where the node's time goes during a scenario: py-spy sampling of the gunicorn workers.

``--profile`` attaches ``py-spy record --subprocesses --format raw`` to the gunicorn master for
the measured window of each scenario (py-spy must be installed: ``pip install py-spy``). The
collapsed stacks are kept in ``bench/results/`` and summarized into the functions with the most
samples, by own time and by inclusive time. Also: CPU seconds used by a process tree, from /proc.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return found


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_by_pid(pids).values())


def postgres_cpu_since(before: dict[int, float]) -> float:
    """CPU the PostgreSQL processes used since ``before`` (backends that exited meanwhile are lost)."""
    now = cpu_by_pid(postgres_pids())
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in now.items())


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def postgres_pids() -> list[int]:
    """PostgreSQL server processes on this machine (read-only /proc scan, for CPU accounting)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("postgres"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Sampler:
    """py-spy on a process tree, started after ``delay_s`` for ``duration_s``."""

    def __init__(self, pid: int, out: Path, delay_s: float, duration_s: float, rate: int = 200) -> None:
        # --gil: sample only the thread holding the GIL, i.e. Python code on a CPU, not threads
        # blocked on a lock, a socket or the database (those would drown the profile).
        self.command = [
            py_spy() or "py-spy", "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil",
            "--rate", str(rate), "--duration", str(max(1, int(duration_s))), "--format", "raw",
            "--output", str(out),
        ]  # fmt: skip
        self.out = out
        self.delay_s = delay_s
        self.proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cancel = threading.Event()

    def _run(self) -> None:
        if self._cancel.wait(self.delay_s):
            return
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.proc.wait()

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def finish(self, timeout: float = 60) -> Path | None:
        self._cancel.set()
        self._thread.join(timeout)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        return self.out if self.out.exists() else None


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)".
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = path.split("/work/main/", 1)[-1]
    return f"{name} ({path})"


def summarize(raw: Path, top: int = 25) -> str:
    """Text summary of a py-spy raw (collapsed) profile: own time and inclusive time per function."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread (")]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        if any(w in leaf for w in ("select (", "poll (", "wait (", "accept (", "sleep (", "_wait_for_tstate_lock")):
            idle += count
        own[leaf] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"samples: {total} (idle/waiting leaf frames: {idle}, {100 * idle / max(total, 1):.0f}%)", ""]
    lines.append("by own time:")
    for frame, count in own.most_common(top):
        lines.append(f"  {100 * count / max(total, 1):5.1f}%  {frame}")
    lines.append("")
    lines.append("by inclusive time:")
    for frame, count in inclusive.most_common(top * 2):
        lines.append(f"  {100 * count / max(total, 1):5.1f}%  {frame}")
    return "\n".join(lines)
