"""Decay sweep benchmark (``bench/run.py --only decay``): a TTL sweep over N facts expiring half of them.

On a throwaway node (``BenchNode``, default setup: gunicorn + qcluster):

- **seeding** (``python bench/decay.py seed``, in the node's environment): N facts (default
  1,000,000; the data set of the query scenario, ``workload.seed_order``) through
  ``assert_facts`` in chunks of 1000. Fact timestamps are content (set by the node at assert
  time, immutable), so the only honest way to have old and new facts is to write them at
  different times: the first half (rounds 0-4 of every entity: their values of relations 2-4
  stay current, the rest are superseded later), a pause of a few seconds, then the second half.
  The seeder reports the newest timestamp of the old half and the oldest of the new half.
- **sweep** (``python bench/decay.py sweep``, in the node's environment): ``manage.py
  decay_sweep --ttl-seconds T`` through ``call_command`` after Django is set up, with T computed
  right before the call so that the sweep's cutoff falls in the middle of the pause: exactly the
  old half is older than the TTL. This is the production path of an operator or cron sweep; the
  HTTP endpoint would hand a sweep of this size to the qcluster as a job, which runs the same
  engine. Reported: the command's own duration (from just before ``call_command`` until it
  returns), the wall clock of the whole process (interpreter and Django start included), the
  command's summary line, and the count of expired facts, ``fact.expired`` events and audit rows
  afterwards; the decayed count must equal the old half.
- **concurrent asserts**: single ``POST /v1/facts`` at a fixed rate (default 50/s over 4 clients,
  one API key each, keep-alive connections, open loop: each request is sent at its scheduled time,
  late requests are sent at once) starting before the sweep and ending a few seconds after it.
  Latency p50/p95/p99/max of the requests sent in a baseline window before the sweep, and of
  those in flight while the sweep command ran. ``late_ms`` is the same measured from each
  request's scheduled send time (it also counts time a client spent waiting for its previous
  request: coordinated omission).

Traffic goes only to 127.0.0.1, every loop is bounded, the node is stopped by ``run.py``.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import workload  # noqa: E402

LOOPBACK = "127.0.0.1"
SEED_TIMEOUT_S = 3600
SWEEP_TIMEOUT_S = 1800
TARGET_SWEEP_S = 5.0  # 1,000,000 facts on SQLite
TARGET_P95_MS = 100.0


# --- in the node's environment ------------------------------------------------------------------


def _django() -> None:
    # The repository first: its ``decay`` app, not this module, is what Django must import.
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stigmem.settings")
    import logging

    import django

    django.setup()
    # django-q2 logs every enqueued task (the write path kicks the log consumers once per chunk).
    logging.getLogger("django-q").setLevel(logging.WARNING)


def seed_main(facts: int, gap_s: float, chunk_size: int = 1000) -> None:
    _django()
    from django.conf import settings
    from django.db.models import Max, Min

    from stigmem.fact_input import parse_fact_body
    from stigmem.facts import assert_facts
    from stigmem.models import Fact

    tenant = settings.STIGMEM_DEFAULT_TENANT
    entities = max(1, facts // workload.FACTS_PER_ENTITY)
    total = entities * workload.FACTS_PER_ENTITY
    order = workload.seed_order(entities)
    started = time.perf_counter()

    def write(pairs) -> int:
        written, chunk = 0, []
        for n, j in pairs:
            chunk.append(parse_fact_body(workload.seed_fact(n, j)))
            if len(chunk) == chunk_size:
                written += sum(o.created for o in assert_facts(tenant, chunk))
                chunk = []
                if written % 100_000 == 0:
                    elapsed = time.perf_counter() - started
                    print(f"  seeded {written:>9,} facts of this half ({elapsed:.0f} s)", flush=True)
        if chunk:
            written += sum(o.created for o in assert_facts(tenant, chunk))
        return written

    old = write(itertools.islice(order, total // 2))
    boundary = Fact.objects.filter(tenant=tenant).aggregate(m=Max("seq"))["m"] or 0
    time.sleep(gap_s)
    new = write(order)
    seconds = time.perf_counter() - started - gap_s
    facts_q = Fact.objects.filter(tenant=tenant)
    old_q = facts_q.filter(seq__lte=boundary).aggregate(newest=Max("timestamp"))
    new_q = facts_q.filter(seq__gt=boundary).aggregate(oldest=Min("timestamp"))
    result = {
        "facts": total,
        "created_old": old,
        "created_new": new,
        "stored": facts_q.count(),
        "old_in_db": facts_q.filter(seq__lte=boundary).count(),
        "boundary_seq": boundary,
        "old_newest_ts": old_q["newest"].timestamp(),
        "new_oldest_ts": new_q["oldest"].timestamp(),
        "seconds": round(seconds, 1),
        "facts_per_s": round((old + new) / seconds) if seconds else None,
    }
    print("DECAYSEED " + json.dumps(result), flush=True)


def sweep_main(cutoff_ts: float, extra: list[str]) -> None:
    _django()
    from django.core.management import CommandError, call_command

    # Computed after Django is up, right before the command takes its own "now": the cutoff
    # (now - ttl) lands within a second of the requested instant.
    ttl = round(time.time() - cutoff_ts)
    print(f"DECAYTTL {ttl}", flush=True)
    code = 0
    started, cpu_started = time.time(), time.process_time()
    try:
        call_command("decay_sweep", "--ttl-seconds", str(ttl), *extra)
    except CommandError as exc:  # what manage.py would turn into its exit code for cron
        print(f"decay_sweep: {exc}", flush=True)
        code = exc.returncode
    ended, cpu = time.time(), time.process_time() - cpu_started
    # CPU time of the sweep's process (its checkpoint thread included): against the wall time, how
    # much of the sweep was work and how much waiting (for the writer lock, the disk, a core).
    record = {"start": started, "end": ended, "cpu_s": cpu, "code": code, "ttl": ttl}
    print(f"DECAYSWEEP {json.dumps(record)}", flush=True)
    sys.exit(code)


COUNTS = """
from django.conf import settings
from stigmem.models import AuditEvent, Event, Fact
t = settings.STIGMEM_DEFAULT_TENANT
facts = Fact.objects.filter(tenant=t)
expired = facts.filter(expired_at__isnull=False)
print("DECAYCOUNTS " + __import__("json").dumps({
    "expired": expired.count(),
    "expired_old": expired.filter(seq__lte=BOUNDARY).count(),
    "expired_new": expired.filter(seq__gt=BOUNDARY).count(),
    "fact_expired_events": Event.objects.filter(tenant=t, topic="fact.expired").count(),
    "audit_rows": AuditEvent.objects.filter(tenant=t, event_type="decay_sweep").count(),
    "audit_detail": AuditEvent.objects.filter(tenant=t, event_type="decay_sweep").order_by("-id")
        .values_list("detail", flat=True).first(),
    "facts": facts.count(),
}))
"""


# --- in the benchmark process ----------------------------------------------------------------


def _node_python(node, args: list[str], timeout: float, log_prefix: str) -> list[str]:
    """Run ``python bench/decay.py ...`` with the node's environment; echo progress, return marker lines."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        cwd=REPO,
        env=node.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if not line.startswith("DECAY"):
                print(f"{log_prefix}{line}", end="", flush=True)
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    if proc.returncode != 0:
        tail = "\n".join(lines[-30:])
        raise RuntimeError(f"bench/decay.py {args[0]} failed ({proc.returncode}):\n{tail}")
    return lines


def _marker(lines: list[str], name: str) -> str:
    for line in lines:
        if line.startswith(name + " "):
            return line.removeprefix(name + " ")
    raise RuntimeError(f"no {name} line in:\n" + "\n".join(lines[-30:]))


def counts(node, boundary: int) -> dict:
    out = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "shell", "-c", COUNTS.replace("BOUNDARY", str(boundary))],
        cwd=REPO,
        env=node.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"manage.py shell failed: {out.stderr[-2000:]}")
    return json.loads(_marker(out.stdout.splitlines(), "DECAYCOUNTS"))


class SteadyAsserts:
    """Single asserts at a fixed total rate, spread over clients (one key and connection each)."""

    def __init__(self, port: int, keys: list[str], rate: float, run: str, max_s: float) -> None:
        self.port = port
        self.keys = keys
        self.rate = rate
        self.run = run
        self.max_s = max_s
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, float, float, bool]] = []  # scheduled, sent, done (unix time), ok
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.t0 = 0.0

    def start(self) -> SteadyAsserts:
        self.t0 = time.time() + 0.2
        self.threads = [threading.Thread(target=self._client, args=(c,), daemon=True) for c in range(len(self.keys))]
        for t in self.threads:
            t.start()
        return self

    def _client(self, client: int) -> None:
        clients = len(self.keys)
        headers = {"Authorization": f"Bearer {self.keys[client]}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=60)
        deadline = self.t0 + self.max_s
        for k in itertools.count():
            scheduled = self.t0 + (k * clients + client) / self.rate
            if self.stop_event.is_set() or scheduled >= deadline:
                break
            if (wait := scheduled - time.time()) > 0 and self.stop_event.wait(wait):
                break
            sent = time.time()
            ok = False
            try:
                conn.request("POST", "/v1/facts", workload.write_fact_json(self.run, client * 100_000_000 + k), headers)
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 201
                if not ok:
                    self._error(f"{response.status}: {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                self._error(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=60)
            with self.lock:
                self.samples.append((scheduled, sent, time.time(), ok))
        conn.close()

    def _error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 5:
                self.errors.append(text)

    def finish(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(70)

    def window(self, start: float, end: float) -> dict:
        """Requests in flight at any moment of [start, end]."""
        with self.lock:
            picked = [s for s in self.samples if s[1] <= end and s[2] >= start]
        good = [s for s in picked if s[3]]
        service = sorted((done - sent) * 1000 for _, sent, done, _ in good)
        late = sorted((done - scheduled) * 1000 for scheduled, _, done, _ in good)
        return {
            "window_s": round(end - start, 2),
            "requests": len(picked),
            # Below the offered rate when writers were held up (late_ms then grows).
            "achieved_per_s": round(len(picked) / (end - start), 1) if end > start else None,
            "errors": len(picked) - len(good),
            "latency_ms": _stats(service),
            "late_ms": _stats(late),
        }


def _stats(ordered: list[float]) -> dict:
    def pct(p: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))], 1)

    return {"p50": pct(50), "p95": pct(95), "p99": pct(99), "max": round(ordered[-1], 1) if ordered else None}


def run(args, node, stamp: str, wait_for_quiet) -> dict:
    run_tag = f"d{stamp[-6:]}"
    report: dict = {"facts": args.decay_facts, "rate_per_s": args.decay_rate, "clients": args.decay_clients}
    print(f"decay: seeding {args.decay_facts:,} facts in two halves {args.decay_gap:g} s apart ...", flush=True)
    lines = _node_python(
        node,
        ["seed", "--facts", str(args.decay_facts), "--gap", str(args.decay_gap)],
        SEED_TIMEOUT_S,
        "  ",
    )
    seeding = json.loads(_marker(lines, "DECAYSEED"))
    report["seeding"] = seeding
    print(f"  {seeding}", flush=True)
    cutoff = (seeding["old_newest_ts"] + seeding["new_oldest_ts"]) / 2
    report["waited_for_quiet_s"] = wait_for_quiet(args.quiet_wait, node.tree_pids())

    # --decay-rate 0: the sweep alone, without concurrent writers.
    keys = node.create_keys(args.decay_clients, ["read", "write"]) if args.decay_rate > 0 else []
    load = SteadyAsserts(
        node.port, keys, args.decay_rate, run_tag, max_s=args.decay_baseline + 2 + SWEEP_TIMEOUT_S + 10
    ).start()
    try:
        if keys:
            time.sleep(2 + args.decay_baseline)  # 2 s warm-up, then the baseline window
        baseline_end = time.time()
        print(f"decay: manage.py decay_sweep (asserts at {args.decay_rate:g}/s meanwhile) ...", flush=True)
        launched = time.time()
        lines = _node_python(node, ["sweep", "--cutoff", repr(cutoff)], SWEEP_TIMEOUT_S, "  sweep: ")
        exited = time.time()
        if keys:
            time.sleep(args.decay_tail)
    finally:
        load.finish()
    sweep = json.loads(_marker(lines, "DECAYSWEEP"))
    summary = next((line for line in lines if "scanned=" in line), "")
    fields = dict(part.split("=", 1) for part in summary.split() if "=" in part)
    report["sweep"] = {
        "command": f"manage.py decay_sweep --ttl-seconds {sweep['ttl']}",
        "summary_line": summary.strip(),
        "scanned": int(fields["scanned"]) if fields.get("scanned", "").isdigit() else None,
        "decayed": int(fields["decayed"]) if fields.get("decayed", "").isdigit() else None,
        "command_s": round(sweep["end"] - sweep["start"], 2),
        "command_cpu_s": round(sweep["cpu_s"], 2),
        "command_reported_s": float(fields["time"].rstrip("s")) if "time" in fields else None,
        "process_wall_s": round(exited - launched, 2),
        "exit_code": sweep["code"],
        "cutoff_margin_s": round(min(cutoff - seeding["old_newest_ts"], seeding["new_oldest_ts"] - cutoff), 2),
    }
    report["baseline"] = load.window(load.t0 + 2, baseline_end)
    report["during_sweep"] = load.window(sweep["start"], sweep["end"])
    report["load_errors"] = load.errors
    report["counts"] = counts(node, seeding["boundary_seq"])
    expected = seeding["old_in_db"]
    report["expected_decayed"] = expected
    report["exactly_old_half"] = (
        report["counts"]["expired_old"] == expected
        and report["counts"]["expired_new"] == 0
        and report["sweep"]["decayed"] == expected
    )
    print(f"  {report['sweep']}\n  counts {report['counts']}", flush=True)
    return report


def table(report: dict) -> str:
    s, c, seed = report["sweep"], report["counts"], report["seeding"]
    b, d = report["baseline"], report["during_sweep"]
    target = f"<= {TARGET_SWEEP_S:g} s (1M, SQLite)"
    lines = [
        "| decay measurement | target | result |",
        "|---|---|---|",
        f"| TTL sweep of {seed['stored']:,} facts, {s['decayed']:,} expired "
        f"({'exactly the old half' if report['exactly_old_half'] else 'NOT exactly the old half: see JSON'}) "
        f"| {target} | {s['command_s']} s in the command, {s['command_cpu_s']} s of it on a CPU "
        f"(it reports {s['command_reported_s']} s; "
        f"{s['process_wall_s']} s process wall clock with Python and Django start) |",
        f"| single asserts at {report['rate_per_s']:g}/s during the sweep ({d['requests']} requests = "
        f"{d['achieved_per_s']}/s, "
        f"{d['errors']} errors) | p95 <= {TARGET_P95_MS:g} ms | p50 {d['latency_ms']['p50']} ms, "
        f"p95 {d['latency_ms']['p95']} ms, p99 {d['latency_ms']['p99']} ms, max {d['latency_ms']['max']} ms "
        f"(from schedule: p95 {d['late_ms']['p95']} ms, max {d['late_ms']['max']} ms) |",
        f"| same, baseline without a sweep ({b['requests']} requests, {b['errors']} errors) | (measured) "
        f"| p50 {b['latency_ms']['p50']} ms, p95 {b['latency_ms']['p95']} ms, p99 {b['latency_ms']['p99']} ms, "
        f"max {b['latency_ms']['max']} ms |",
        f"| `fact.expired` events / expired facts / `decay_sweep` audit rows | = decayed "
        f"| {c['fact_expired_events']:,} / {c['expired']:,} / {c['audit_rows']} |",
        f"| seeding (two halves, assert_facts in chunks of 1000) | (report) "
        f"| {seed['facts_per_s']:,} facts/s ({seed['seconds']} s) |",
    ]
    if not report["rate_per_s"]:
        del lines[3:5]  # the sweep alone: no asserts were sent
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="decay bench helpers (the benchmark: bench/run.py --only decay)")
    sub = parser.add_subparsers(dest="what", required=True)
    seed_parser = sub.add_parser("seed")
    seed_parser.add_argument("--facts", type=int, required=True)
    seed_parser.add_argument("--gap", type=float, default=5.0)
    sweep_parser = sub.add_parser("sweep")
    sweep_parser.add_argument("--cutoff", type=float, required=True)
    parsed, rest = parser.parse_known_args()
    if parsed.what == "seed":
        seed_main(parsed.facts, parsed.gap)
    else:
        sweep_main(parsed.cutoff, rest)
