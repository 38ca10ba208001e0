"""Webhook delivery benchmark (``bench/run.py --only delivery``).

Starts a local webhook receiver (``python bench/delivery.py receiver PORT OUT``: answers 200 at
once and appends ``arrival_unix_time path webhook-id fact-id`` per request) and a node
(``manage.py runnode``, default setup: gunicorn + qcluster) with
``STIGMEM_WEBHOOK_ALLOW_PRIVATE=true``, then measures:

- **throughput**: N webhook subscriptions (1, 10, 100) on scope ``local``, each with its own
  receiver path; ~2,000 / N facts asserted through ``/v1/facts/batch`` (so ~2,000 deliveries per
  run); deliveries/s = deliveries received / (last arrival - first arrival), plus the time from
  the first assert to the last arrival;
- **latency**: one subscription, single ``POST /v1/facts`` at a fixed rate; per fact, the time
  from the assert's response to the receiver's arrival (p50 / p95 / max);
- **overhead of 10,000 non-matching subscriptions**: the single-assert scenario with 0 and with
  10,000 entity subscriptions on other entities (bulk-created in the node's environment).

Traffic goes only to 127.0.0.1, every wait is bounded, the receiver is always stopped (the node
is a ``BenchNode`` context manager in ``run.py``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import profiling  # noqa: E402

NODE_ENV = {"STIGMEM_WEBHOOK_ALLOW_PRIVATE": "true"}
THROUGHPUT_DELIVERIES = 2000
BATCH_CHUNK = 200
DRAIN_TIMEOUT_S = 150.0
NOMATCH_SUBSCRIPTIONS = 10_000


# --- receiver (its own process) ---------------------------------------------------------------


def receiver_main(port: int, out_path: str) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    lock = threading.Lock()
    out = open(out_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the life of the process

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the delivery engine pools connections
        # One buffered write per response (flushed by the server after do_POST) and no Nagle:
        # the stock unbuffered writer sends headers and body as two small segments, and Nagle's
        # wait for the client's delayed ACK then adds up to 40 ms to every request.
        wbufsize = -1
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            arrived = time.time()
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            try:
                fact_id = (json.loads(body).get("fact") or {}).get("id") or "-"
            except ValueError:
                fact_id = "-"
            line = f"{arrived:.6f} {self.path} {self.headers.get('webhook-id') or '-'} {fact_id}\n"
            with lock:
                out.write(line)
                out.flush()

        def log_message(self, format: str, *args) -> None:
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


class Receiver:
    def __init__(self, port: int, out: Path) -> None:
        self.port = port
        self.out = out
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Receiver:
        self.out.touch()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "receiver", str(self.port), str(self.out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("POST", "/ping", b"{}", {"Content-Length": "2"})
                conn.getresponse().read()
                conn.close()
                return self
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("the bench receiver did not start")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def lines(self, prefix: str) -> list[tuple[float, str, str, str]]:
        rows = []
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[1].startswith(prefix):
                rows.append((float(parts[0]), parts[1], parts[2], parts[3]))
        return rows


# --- helpers ----------------------------------------------------------------------------------


def _fact(run: str, i: int, entity: str | None = None) -> dict:
    return {
        "entity": entity or f"stigmem://bench/user/{run}-{i // 10}",
        "relation": f"memory:r{i % 10}",
        "value": {"type": "string", "v": f"delivery bench {run} {i}"},
        "source": "stigmem://bench/agent/delivery",
        "confidence": 1.0,
        "scope": "local",
    }


def _request(node, method: str, path: str, body: dict | None = None, tries: int = 20) -> tuple[int, dict | None]:
    for _ in range(tries):
        status, data = node.request(method, path, body)
        if status != 429:
            return status, data
        time.sleep(0.5)
    return status, data


def create_subscriptions(node, receiver: Receiver, count: int, tag: str) -> list[str]:
    ids = []
    for i in range(count):
        status, body = _request(
            node,
            "POST",
            "/v1/subscriptions",
            {
                "target": "local",
                "on_change": "webhook",
                "delivery_address": f"http://127.0.0.1:{receiver.port}/{tag}/{i}",
            },
        )
        if status not in (200, 201) or not body:
            raise RuntimeError(f"creating a subscription failed: {status} {body}")
        ids.append(body["id"])
    return ids


def delete_subscriptions(node, ids: list[str]) -> None:
    for sub_id in ids:
        _request(node, "DELETE", f"/v1/subscriptions/{sub_id}")


def _wait_for(receiver: Receiver, prefix: str, expected: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    rows = receiver.lines(prefix)
    while len(rows) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        rows = receiver.lines(prefix)
    return rows


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- scenarios --------------------------------------------------------------------------------


def throughput(node, receiver: Receiver, subscriptions: int, run: str) -> dict:
    tag = f"t{subscriptions}{run}"
    ids = create_subscriptions(node, receiver, subscriptions, tag)
    facts = max(1, THROUGHPUT_DELIVERIES // subscriptions)
    expected = facts * subscriptions
    pids = node.tree_pids()
    cpu0 = profiling.cpu_seconds(pids)
    t0 = time.time()
    for start in range(0, facts, BATCH_CHUNK):
        chunk = [_fact(tag, i) for i in range(start, min(facts, start + BATCH_CHUNK))]
        status, body = _request(node, "POST", "/v1/facts/batch", {"facts": chunk})
        if status != 200:
            raise RuntimeError(f"batch assert failed: {status} {str(body)[:300]}")
    asserted = time.time()
    rows = _wait_for(receiver, f"/{tag}/", expected, DRAIN_TIMEOUT_S)
    node_cpu = profiling.cpu_seconds(pids) - cpu0
    delete_subscriptions(node, ids)
    arrivals = sorted(r[0] for r in rows)
    unique = len({r[2] for r in rows})
    result = {
        "scenario": "delivery-throughput",
        "subscriptions": subscriptions,
        "facts": facts,
        "expected_deliveries": expected,
        "received": len(rows),
        "unique_webhook_ids": unique,
        "assert_s": round(asserted - t0, 2),
        # Node CPU (web workers + qcluster) from the first assert until the last arrival was seen
        # (polled every 0.5 s), per delivery: assert, dispatch and delivery together.
        "node_cpu_s": round(node_cpu, 1),
        "node_cpu_ms_per_delivery": round(1000 * node_cpu / max(1, len(rows)), 2),
    }
    if len(arrivals) >= 2:
        span = arrivals[-1] - arrivals[0]
        result.update(
            first_arrival_after_first_assert_s=round(arrivals[0] - t0, 2),
            arrival_span_s=round(span, 2),
            deliveries_per_s=round(len(arrivals) / span, 1) if span > 0 else None,
            end_to_end_s=round(arrivals[-1] - t0, 2),
            end_to_end_per_s=round(len(arrivals) / (arrivals[-1] - t0), 1),
        )
    return result


def latency(node, receiver: Receiver, rate: float, duration: float, run: str) -> dict:
    tag = f"l{run}"
    ids = create_subscriptions(node, receiver, 1, tag)
    sent: dict[str, float] = {}
    errors = 0
    interval = 1.0 / rate
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < duration:
        due = start + i * interval
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        status, body = node.request("POST", "/v1/facts", _fact(tag, i))
        done = time.time()
        if status == 201 and body:
            sent[body["id"]] = done
        else:
            errors += 1
        i += 1
    rows = _wait_for(receiver, f"/{tag}/", len(sent), 120.0)
    delete_subscriptions(node, ids)
    lat = [arr - sent[fid] for arr, _, _, fid in rows if fid in sent]
    return {
        "scenario": "delivery-latency",
        "subscriptions": 1,
        "rate_per_s": rate,
        "duration_s": duration,
        "asserted": len(sent),
        "assert_errors": errors,
        "received": len(lat),
        "latency_s": {
            "p50": round(_pct(lat, 0.50), 3) if lat else None,
            "p95": round(_pct(lat, 0.95), 3) if lat else None,
            "max": round(max(lat), 3) if lat else None,
            "mean": round(statistics.fmean(lat), 3) if lat else None,
        },
    }


def bulk_nomatch(node, receiver: Receiver, count: int) -> float:
    """``count`` active entity subscriptions on entities no bench fact uses, as the API would create them."""
    # One through the API, so tenant and subscriber identity are the bootstrap key's.
    (template,) = create_subscriptions(node, receiver, 1, "nomatch-template")
    status, body = node.request("GET", f"/v1/subscriptions/{template}")
    if status != 200 or not body:
        raise RuntimeError(f"reading the template subscription failed: {status} {body}")
    script = f"""
from django.utils import timezone
from subscriptions.models import Subscription
from subscriptions.service import SubscriptionRequest, new_signing_secret
t = Subscription.objects.get(id="{template}")
rows = []
for i in range({count}):
    target = f"stigmem://bench/nomatch/e{{i}}"
    req = SubscriptionRequest(target=target, target_kind=Subscription.Kind.ENTITY, match_key=target,
        on_change="webhook", delivery_address="http://127.0.0.1:{receiver.port}/nomatch/" + str(i),
        idempotency_key="", topics=[])
    rows.append(Subscription(tenant=t.tenant, subscriber_identity=t.subscriber_identity, target=target,
        target_kind=req.target_kind, match_key=req.match_key, topics=[], on_change=req.on_change,
        delivery_address=req.delivery_address, dedup_key=req.dedup_key(), created_at=timezone.now(),
        signing_secret=new_signing_secret()))
Subscription.objects.bulk_create(rows, batch_size=500)
t.delete()
print("NOMATCH", Subscription.objects.filter(target__startswith="stigmem://bench/nomatch/").count())
"""
    started = time.monotonic()
    stored = shell(node, script)
    if stored != count:
        raise RuntimeError(f"bulk-created {stored} subscriptions, expected {count}")
    return round(time.monotonic() - started, 1)


DELETE_NOMATCH = """
from subscriptions.models import Subscription
Subscription.objects.filter(target__startswith="stigmem://bench/nomatch/").delete()
print("NOMATCH", Subscription.objects.count())
"""


def shell(node, script: str) -> int:
    """``manage.py shell -c`` in the node's environment (same database)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "shell", "-c", script],
        cwd=REPO,
        env=node.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0 or "NOMATCH" not in out.stdout:
        raise RuntimeError(f"manage.py shell failed: {out.stderr[-2000:]}")
    return int(out.stdout.split("NOMATCH", 1)[1].split()[0])


def nomatch(node, receiver: Receiver, single, rounds: int) -> dict:
    """Single asserts with 0 and with 10,000 non-matching subscriptions, alternating per round
    (0, 10k, 0, 10k, ...) so drift of a shared machine hits both sides alike."""
    zero, many, created = [], [], []
    for r in range(rounds):
        print(f"single asserts with 0 subscriptions (round {r + 1}/{rounds}) ...", flush=True)
        zero.append(single())
        print(f"  {zero[-1]['facts_per_s']:.0f} facts/s, p50 {zero[-1]['latency_ms']['p50']} ms", flush=True)
        print(f"bulk-creating {NOMATCH_SUBSCRIPTIONS:,} non-matching subscriptions ...", flush=True)
        created.append(bulk_nomatch(node, receiver, NOMATCH_SUBSCRIPTIONS))
        print(f"single asserts with {NOMATCH_SUBSCRIPTIONS:,} non-matching subscriptions ...", flush=True)
        many.append(single())
        print(f"  {many[-1]['facts_per_s']:.0f} facts/s, p50 {many[-1]['latency_ms']['p50']} ms", flush=True)
        shell(node, DELETE_NOMATCH)

    def summary(runs: list[dict]) -> dict:
        return {
            "facts_per_s": statistics.median(r["facts_per_s"] for r in runs),
            "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in runs),
            "p95_ms": statistics.median(r["latency_ms"]["p95"] for r in runs),
            "node_cpu_ms_per_request": statistics.median(r.get("node_cpu_ms_per_request") or 0 for r in runs),
            "runs": [
                {
                    "facts_per_s": round(r["facts_per_s"], 1),
                    "latency_ms": r["latency_ms"],
                    "cpu_s": r["cpu_s"],
                    "node_cpu_ms_per_request": r.get("node_cpu_ms_per_request"),
                }
                for r in runs
            ],
        }

    z, m = summary(zero), summary(many)
    return {
        "subscriptions": NOMATCH_SUBSCRIPTIONS,
        "rounds": rounds,
        "bulk_create_s": created,
        "zero": z,
        "many": m,
        "deliveries_to_nonmatching": len(receiver.lines("/nomatch/")),
        "throughput_change_pct": round(100 * (m["facts_per_s"] / z["facts_per_s"] - 1), 1),
        "p50_change_pct": round(100 * (m["p50_ms"] / z["p50_ms"] - 1), 1),
        "cpu_per_request_change_pct": round(100 * (m["node_cpu_ms_per_request"] / z["node_cpu_ms_per_request"] - 1), 1),
    }


def run(args, node, receiver: Receiver, single, stamp: str) -> dict:
    """Every delivery measurement on one node; ``single()`` runs run.py's single-assert scenario."""
    run_tag = stamp[-6:]
    report: dict = {"throughput": [], "node_env": NODE_ENV}
    for n in args.delivery_subscriptions:
        print(f"delivery: {n} subscription(s), ~{THROUGHPUT_DELIVERIES} deliveries ...", flush=True)
        result = throughput(node, receiver, n, run_tag)
        print(f"  {result}", flush=True)
        report["throughput"].append(result)
    print(f"delivery latency: 1 subscription, {args.delivery_rate:g} asserts/s for {args.delivery_seconds:g} s ...")
    report["latency"] = latency(node, receiver, args.delivery_rate, args.delivery_seconds, run_tag)
    print(f"  {report['latency']}", flush=True)
    if not args.no_nomatch:
        report["nomatch"] = nomatch(node, receiver, single, max(1, args.repeat))
    return report


def table(report: dict) -> str:
    lines = ["| delivery measurement | target | result |", "|---|---|---|"]
    for r in report.get("throughput", []):
        lines.append(
            f"| {r['subscriptions']} subscription(s), {r['received']}/{r['expected_deliveries']} received "
            f"| >= 500 deliveries/s | {r.get('deliveries_per_s')} /s (arrival span {r.get('arrival_span_s')} s; "
            f"first assert -> last arrival {r.get('end_to_end_s')} s = {r.get('end_to_end_per_s')} /s) |"
        )
    lat = report.get("latency")
    if lat:
        s = lat["latency_s"]
        lines.append(
            f"| assert -> receiver, {lat['rate_per_s']:g}/s, {lat['received']}/{lat['asserted']} received "
            f"| p50 <= 1 s | p50 {s['p50']} s, p95 {s['p95']} s, max {s['max']} s |"
        )
    nm = report.get("nomatch")
    if nm:
        lines.append(
            f"| single asserts, 0 vs {nm['subscriptions']:,} non-matching subscriptions | <= 10 % extra "
            f"| {nm['zero']['facts_per_s']:.0f} -> {nm['many']['facts_per_s']:.0f} facts/s "
            f"({nm['throughput_change_pct']:+.1f} %, median of {nm['rounds']}), p50 {nm['zero']['p50_ms']} -> "
            f"{nm['many']['p50_ms']} ms, node CPU/request {nm['cpu_per_request_change_pct']:+.1f} % |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "receiver":
        receiver_main(int(sys.argv[2]), sys.argv[3])
    else:
        sys.exit("usage: delivery.py receiver PORT OUT_FILE  (the benchmark itself: bench/run.py --only delivery)")
