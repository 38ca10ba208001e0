"""Federation replication benchmark (``bench/run.py --only federation``): two nodes, one pulling from the other.

Two throwaway nodes on 127.0.0.1 (``BenchNode``, web only: no qcluster), federation enabled and
private addresses allowed. The sink connects to the source with the real ``federation connect``
command and both approve each other over the API (fingerprints read from the well-knowns). Then:

- **catch-up**: the source gets a backlog of N facts (default 50,000, through ``/v1/facts/batch``);
  the sink runs ``manage.py pull_peers --peer <source>`` (the code path of the scheduled worker) with
  a pull budget large enough to drain it; reported: wall time of that command from start to exit
  (process start-up included) and facts ingested per second over it, checked against the count of
  facts stored on the sink.
- **steady state**: the sink runs ``pull_peers --peer <source> --loop`` with a 1 s pull interval while the source
  takes writes at a fixed rate (default 200 facts/s, batches every 0.1 s); a poller on the sink's
  ``GET /v1/facts`` records when each fact first becomes visible there. Replication lag per fact =
  first seen on the sink - the source's response to the write; p50 / p95 / max.

Traffic goes only to 127.0.0.1, every wait is bounded, both nodes are always stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from node import BenchNode  # noqa: E402

NODE_ENV = {
    "STIGMEM_FEDERATION_ENABLED": "true",
    "STIGMEM_FEDERATION_ALLOW_PRIVATE": "true",
    "STIGMEM_RATE_LIMIT_WRITE_BURST": "1000000",
    "STIGMEM_RATE_LIMIT_WRITE_PER_S": "1000000",
    "STIGMEM_RATE_LIMIT_READ_BURST": "1000000",
    "STIGMEM_RATE_LIMIT_READ_PER_S": "1000000",
}
BATCH = 1000
LAG_RELATION = "bench:lag"
CATCH_UP_TIMEOUT_S = 600
POLL_INTERVAL_S = 0.1


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def _fact(run: str, i: int, relation: str = "memory:value") -> dict:
    # A mix of the value types, company and public scope: all of it is in the agreement.
    kind = i % 4
    value = (
        {"type": "number", "v": i}
        if kind == 0
        else {"type": "number", "v": i + 0.5}
        if kind == 1
        else {"type": "text", "v": f"fact {i} of {run}: café ☕"}
        if kind == 2
        else {"type": "string", "v": f"value-{i}"}
    )
    lag_probe = relation == LAG_RELATION
    return {
        # Lag probes each get a key of their own: the poller sees current values only.
        "entity": f"stigmem://bench/{'probe' if lag_probe else 'item'}/{run}-{i if lag_probe else i // 10}",
        "relation": relation if lag_probe else f"{relation}{i % 10}",
        "value": value,
        "source": "stigmem://bench/agent/federation",
        "scope": "company" if i % 2 else "public",
    }


def _manage(node: BenchNode, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        cwd=REPO,
        env={**node.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def _fingerprint(node: BenchNode) -> str:
    _, well_known = node.request("GET", "/.well-known/stigmem", auth=False)
    return "sha256:" + hashlib.sha256(well_known["federation_pubkey"].encode()).hexdigest()


def _only_peer(node: BenchNode) -> dict:
    status, body = node.request("GET", "/v1/federation/peers")
    if status != 200 or len(body["peers"]) != 1:
        raise RuntimeError(f"expected one peer: {status} {body}")
    return body["peers"][0]


def connect(source: BenchNode, sink: BenchNode) -> str:
    """The handshake; returns the source's peer id on the sink."""
    _manage(sink, "federation", "connect", source.url, "--api-key", source.api_key, "--scopes", "company", "public")
    on_sink, on_source = _only_peer(sink), _only_peer(source)
    for node, peer, other in ((sink, on_sink, source), (source, on_source, sink)):
        status, body = node.request(
            "POST", f"/v1/federation/peers/{peer['peer_id']}/approve", {"pubkey_fingerprint": _fingerprint(other)}
        )
        if status != 200:
            raise RuntimeError(f"approval failed: {status} {body}")
    return on_sink["peer_id"]


def write_batch(node: BenchNode, facts: list[dict]) -> list[str]:
    for _ in range(20):
        status, body = node.request("POST", "/v1/facts/batch", {"facts": facts})
        if status == 200:
            if body["rejected"]:
                raise RuntimeError(f"bench facts rejected: {body['results'][:3]}")
            return [r["fact"]["id"] for r in body["results"]]
        time.sleep(0.5)
    raise RuntimeError(f"batch write failed: {status} {body}")


def stored_from_peers(sink: BenchNode) -> int:
    out = _manage(
        sink,
        "shell",
        "-c",
        "from stigmem.models import Fact; print(Fact.objects.filter(received_from__isnull=False).count())",
    )
    return int(out.strip().splitlines()[-1])


def catch_up(source: BenchNode, sink: BenchNode, peer_id: str, facts: int, run: str) -> dict:
    started = time.monotonic()
    for start in range(0, facts, BATCH):
        write_batch(source, [_fact(run, i) for i in range(start, min(facts, start + BATCH))])
    seeded_s = time.monotonic() - started
    print(f"  backlog of {facts:,} facts written on the source in {seeded_s:.1f} s", flush=True)
    started = time.monotonic()
    output = _manage(
        sink,
        "pull_peers",
        "--peer",
        peer_id,
        env={"STIGMEM_FEDERATION_PULL_BUDGET_S": str(CATCH_UP_TIMEOUT_S)},
        timeout=CATCH_UP_TIMEOUT_S + 60,
    )
    wall = time.monotonic() - started
    stored = stored_from_peers(sink)
    return {
        "backlog": facts,
        "stored_on_sink": stored,
        "pull_wall_s": round(wall, 2),
        "facts_per_s": round(stored / wall) if wall else None,
        "seed_s": round(seeded_s, 1),
        "pull_output": output.strip()[-500:],
    }


class VisibilityPoller(threading.Thread):
    """Records when each lag-probe fact first shows up in the sink's GET /v1/facts."""

    def __init__(self, sink: BenchNode):
        super().__init__(daemon=True)
        self.sink = sink
        self.first_seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            self.stop.wait(POLL_INTERVAL_S)

    def poll(self) -> None:
        cursor = None
        while True:
            query = {"relation": LAG_RELATION, "limit": "500"}
            if cursor:
                query["cursor"] = cursor
            seen_at = time.monotonic()
            status, body = self.sink.request("GET", "/v1/facts?" + urllib.parse.urlencode(query))
            if status != 200:
                return
            fresh = [f["id"] for f in body["facts"] if f["id"] not in self.first_seen]
            for fact_id in fresh:
                self.first_seen[fact_id] = seen_at
            # Newest first: once a page holds nothing new, older pages hold nothing new either.
            cursor = body.get("cursor")
            if not fresh or not cursor:
                return


def steady_state(source: BenchNode, sink: BenchNode, peer_id: str, rate: float, seconds: float, run: str) -> dict:
    log = sink.data_dir / "pull-loop.log"
    env = {**sink.env, "STIGMEM_FEDERATION_PULL_INTERVAL_S": "1"}
    with open(log, "wb") as out:
        loop = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "pull_peers", "--peer", peer_id, "--loop"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    poller = VisibilityPoller(sink)
    poller.start()
    written: dict[str, float] = {}
    try:
        per_tick = max(1, round(rate * 0.1))
        ticks = int(seconds / 0.1)
        started = time.monotonic()
        for tick in range(ticks):
            facts = [_fact(run, tick * per_tick + j, LAG_RELATION) for j in range(per_tick)]
            ids = write_batch(source, facts)
            done = time.monotonic()
            written.update(dict.fromkeys(ids, done))
            time.sleep(max(0.0, started + (tick + 1) * 0.1 - time.monotonic()))
        write_span = time.monotonic() - started
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not set(written) <= set(poller.first_seen):
            time.sleep(0.2)
    finally:
        poller.stop.set()
        poller.join(timeout=10)
        loop.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            loop.wait(timeout=30)
        if loop.poll() is None:
            loop.kill()
    lags = [poller.first_seen[i] - t for i, t in written.items() if i in poller.first_seen]
    return {
        "rate_per_s": rate,
        "written": len(written),
        "achieved_rate_per_s": round(len(written) / write_span, 1),
        "replicated": len(lags),
        "lag_s": {"p50": _pct(lags, 0.5), "p95": _pct(lags, 0.95), "max": _pct(lags, 1.0)},
        "pull_interval_s": 1,
        "poll_interval_s": POLL_INTERVAL_S,
    }


def run(args, data_dir: Path, database_urls: tuple[str | None, str | None], stamp: str) -> dict:
    run_tag = stamp[-6:]
    report: dict = {"node_env": NODE_ENV}
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(
            BenchNode(data_dir / "source", database_url=database_urls[0], qcluster=False, extra_env=NODE_ENV)
        )
        sink = stack.enter_context(
            BenchNode(data_dir / "sink", database_url=database_urls[1], qcluster=False, extra_env=NODE_ENV)
        )
        print(f"federation: source {source.url}, sink {sink.url}; connecting ...", flush=True)
        peer_id = connect(source, sink)
        print(f"federation catch-up: {args.federation_backlog:,} facts ...", flush=True)
        report["catch_up"] = catch_up(source, sink, peer_id, args.federation_backlog, run_tag)
        print(f"  {report['catch_up']}", flush=True)
        print(f"federation steady state: {args.federation_rate:g} facts/s for {args.federation_seconds:g} s ...")
        report["steady"] = steady_state(source, sink, peer_id, args.federation_rate, args.federation_seconds, run_tag)
        print(f"  {report['steady']}", flush=True)
    return report


def table(report: dict) -> str:
    lines = ["| federation measurement | target | result |", "|---|---|---|"]
    c = report.get("catch_up")
    if c:
        lines.append(
            f"| catch-up of a {c['backlog']:,}-fact backlog ({c['stored_on_sink']:,} stored on the sink) "
            f"| within 60 s; ingest >= 2,000 facts/s | {c['pull_wall_s']} s; {c['facts_per_s']:,} facts/s |"
        )
    s = report.get("steady")
    if s:
        lag = s["lag_s"]
        lines.append(
            f"| steady state, {s['achieved_rate_per_s']:g} facts/s written, {s['replicated']}/{s['written']} "
            f"replicated, pull interval {s['pull_interval_s']} s | (measured) "
            f"| lag p50 {lag['p50']} s, p95 {lag['p95']} s, max {lag['max']} s |"
        )
    return "\n".join(lines)
