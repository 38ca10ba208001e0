"""The Python load generator: closed-loop clients on keep-alive connections, in several processes.

Each client is a thread holding one ``http.client`` connection and one API key; the clients are
spread over a few processes so the generator's own GIL is not the limit. All clients start at
one wall-clock instant, run a warm-up that is not recorded, then a measured window. Every loop
is bounded by both a deadline and a request quota. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import multiprocessing
import random
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote

import workload

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class LoadSpec:
    kind: str  # "single" | "batch" | "query"
    port: int
    keys: tuple[str, ...]
    clients: int
    duration_s: float
    warmup_s: float = 2.0
    max_requests: int = 1_000_000
    processes: int = 2
    run: str = "r"
    batch_size: int = 1000
    entities: int = 0  # query: how many seeded entities to pick from


@dataclass
class ClientResult:
    latencies_ms: list[float] = field(default_factory=list)
    ok: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    first_error: str = ""


def query_path(entity: str) -> str:
    return "/v1/facts?entity=" + quote(entity, safe="")


def _request_for(spec: LoadSpec, client: int, n: int, rng: random.Random) -> tuple[str, str, bytes | None, int]:
    if spec.kind == "single":
        index = client * 100_000_000 + n
        return "POST", "/v1/facts", workload.write_fact_json(spec.run, index), 201
    if spec.kind == "batch":
        start = (client * 100_000 + n) * spec.batch_size
        return "POST", "/v1/facts/batch", workload.batch_json(spec.run, start, spec.batch_size), 200
    if spec.kind == "query":
        return "GET", query_path(workload.seed_entity(rng.randrange(spec.entities))), None, 200
    raise ValueError(spec.kind)


def _client(spec: LoadSpec, client: int, start_at: float, quota: int, result: ClientResult) -> None:
    # Only 127.0.0.1: the host is fixed here, not taken from the caller.
    conn = http.client.HTTPConnection(LOOPBACK, spec.port, timeout=60)
    headers = {"Authorization": f"Bearer {spec.keys[client % len(spec.keys)]}", "Content-Type": "application/json"}
    rng = random.Random(client * 7919 + 1)
    measure_from = start_at + spec.warmup_s
    end = measure_from + spec.duration_s
    time.sleep(max(0.0, start_at - time.time()))
    n = 0
    while n < quota:
        wall = time.time()
        if wall >= end:
            break
        method, path, body, expected = _request_for(spec, client, n, rng)
        n += 1
        started = time.perf_counter()
        try:
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            result.errors += 1
            result.first_error = result.first_error or repr(exc)
            conn.close()
            conn = http.client.HTTPConnection(LOOPBACK, spec.port, timeout=60)
            continue
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        good = response.status == expected and (spec.kind != "batch" or b'"rejected":0' in data[:200])
        if wall < measure_from:
            continue
        result.statuses[response.status] = result.statuses.get(response.status, 0) + 1
        if good:
            result.ok += 1
            result.latencies_ms.append(elapsed_ms)
        else:
            result.errors += 1
            result.first_error = result.first_error or f"{response.status}: {data[:300]!r}"
    conn.close()


def _process(spec: LoadSpec, clients: list[int], start_at: float, quota: int) -> list[ClientResult]:
    results = [ClientResult() for _ in clients]
    threads = [
        threading.Thread(target=_client, args=(spec, c, start_at, quota, r), daemon=True)
        for c, r in zip(clients, results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(spec.warmup_s + spec.duration_s + 120)
    return results


def run_load(spec: LoadSpec) -> dict:
    """Run the clients; returns throughput and latency figures of the measured window."""
    processes = max(1, min(spec.processes, spec.clients))
    groups = [list(range(p, spec.clients, processes)) for p in range(processes)]
    quota = max(1, spec.max_requests // spec.clients)
    start_at = time.time() + 1.5  # time for the worker processes to start
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=ctx) as pool:
        futures = [pool.submit(_process, spec, group, start_at, quota) for group in groups]
        results = [r for f in futures for r in f.result()]
    latencies = sorted(lat for r in results for lat in r.latencies_ms)
    statuses: dict[int, int] = {}
    for r in results:
        for status, count in r.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    ok = sum(r.ok for r in results)
    return summarize(
        ok=ok,
        errors=sum(r.errors for r in results),
        window_s=spec.duration_s,
        latencies_ms=latencies,
        statuses=statuses,
        first_error=next((r.first_error for r in results if r.first_error), ""),
    )


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    rank = min(len(sorted_values) - 1, max(0, round(p / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def summarize(
    *, ok: int, errors: int, window_s: float, latencies_ms: list[float], statuses: dict, first_error: str = ""
) -> dict:
    return {
        "requests": ok,
        "errors": errors,
        "window_s": window_s,
        "requests_per_s": ok / window_s if window_s else 0.0,
        "latency_ms": {
            "p50": percentile(latencies_ms, 50),
            "p95": percentile(latencies_ms, 95),
            "p99": percentile(latencies_ms, 99),
            "max": latencies_ms[-1] if latencies_ms else None,
            "mean": sum(latencies_ms) / len(latencies_ms) if latencies_ms else None,
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "first_error": first_error,
        "loadgen": "python",
    }
