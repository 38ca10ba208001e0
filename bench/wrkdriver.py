"""Driving ``wrk`` (when installed) for the high-rate scenarios: single-fact asserts and queries.

wrk is a C event-loop load generator: at the same request rate it uses a fraction of the CPU
the Python generator needs, which matters when it shares two cores with the node. Scripts are
``bench/wrk/common.lua`` plus the scenario's file; a run is bounded by ``-d`` and by a per-thread
request quota. Each scenario run is preceded by a short unrecorded warm-up run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import workload

WRK_DIR = Path(__file__).resolve().parent / "wrk"


def available() -> bool:
    return shutil.which("wrk") is not None


def _script(kind: str, directory: Path) -> Path:
    path = directory / f"{kind}.lua"
    path.write_text((WRK_DIR / "common.lua").read_text() + "\n" + (WRK_DIR / f"{kind}.lua").read_text())
    return path


def _run_wrk(port: int, script: Path, threads: int, connections: int, duration_s: float, args: list[str]) -> dict:
    command = [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration_s))}s",
        "--timeout", "30s", "-s", str(script), f"http://127.0.0.1:{port}", "--", *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 120, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return json.loads(line.removeprefix("WRKJSON "))


def run_wrk(
    kind: str,
    *,
    port: int,
    keys: list[str],
    clients: int,
    duration_s: float,
    warmup_s: float,
    max_requests: int,
    run: str,
    entities: int = 0,
    threads: int = 2,
) -> dict:
    threads = max(1, min(threads, clients))
    quota = str(max(1, max_requests // threads))
    key_list = ",".join(keys)
    with tempfile.TemporaryDirectory(prefix="stigmem-wrk-") as tmp:
        script = _script(kind, Path(tmp))

        def args_for(tag: str) -> list[str]:
            if kind == "single":
                return [tag, key_list, quota]
            if kind == "query":
                return [quote(workload.SEED_ENTITY_PREFIX, safe=""), str(entities), key_list, quota]
            raise ValueError(kind)

        if warmup_s > 0:
            _run_wrk(port, script, threads, clients, warmup_s, args_for(run + "w"))
        raw = _run_wrk(port, script, threads, clients, duration_s, args_for(run))
    window_s = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    ok = raw["requests"] - raw["status"]
    return {
        "requests": ok,
        "errors": errors,
        "window_s": window_s,
        "requests_per_s": ok / window_s if window_s else 0.0,
        "latency_ms": {
            "p50": raw["p50"] / 1000,
            "p95": raw["p95"] / 1000,
            "p99": raw["p99"] / 1000,
            "max": raw["max"] / 1000,
            "mean": raw["mean"] / 1000,
        },
        "statuses": {},
        "first_error": "" if not errors else f"wrk errors: {raw}",
        "loadgen": f"wrk -t{threads} -c{clients}",
    }
