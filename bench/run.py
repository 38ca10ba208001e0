"""The stigmem node benchmark: one command starts a throwaway node, loads it, and reports.

    .venv/bin/python bench/run.py                      # everything, SQLite, 1,000,000 facts seeded
    .venv/bin/python bench/run.py --only batch,single  # just the write paths
    .venv/bin/python bench/run.py --facts 100000 --only query
    .venv/bin/python bench/run.py --database-url postgres://postgres@127.0.0.1:5432/postgres

Scenarios (targets from the performance issue; the load generator shares the machine's cores):
  batch   POST /v1/facts/batch, 1000 new facts per request          >= 10,000 facts/s
  single  POST /v1/facts, one new fact per request, 16 clients      >= 600 facts/s
  query   GET /v1/facts?entity=<random seeded entity>, N facts in   p95 <= 15 ms
  delivery  webhooks to a local receiver (bench/delivery.py; not in the default set):
          deliveries/s with 1, 10, 100 subscriptions                >= 500 deliveries/s
          assert -> receiver latency                                 p50 <= 1 s
          single asserts with 10,000 non-matching subscriptions      <= 10 % extra
  federation  two nodes, one pulling from the other (bench/replication.py; not in the default set):
          catch-up of a 50,000-fact backlog                          <= 60 s, >= 2,000 facts/s
          steady-state replication lag at 200 facts/s of writes      (measured)
  decay   TTL sweep over 1,000,000 facts expiring half of them (bench/decay.py; not in the default set):
          manage.py decay_sweep on SQLite                            <= 5 s
          single asserts at 50/s during the sweep                    p95 <= 100 ms
  ttp     the TTP rule engine in one process, no node (bench/ttp.py; not in the default set):
          facts/s against the shipped pack, one core                 >= 20,000 facts/s
          facts/s against 1,000 generated rules                      >= 2,000 facts/s
          worst single evaluation, adversarial values                <= 50 ms
          end to end: assert_facts, then the ttp consumer drained    (report)

The node is ``manage.py runnode`` in a temporary STIGMEM_DATA_DIR on a free 127.0.0.1 port; with
``--database-url`` it uses a scratch PostgreSQL database created next to the given one and dropped
afterwards. Load goes only to 127.0.0.1, every loop is bounded in time and count, and the node is
always stopped. Results: a table on stdout and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import resource
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import delivery  # noqa: E402
import loadgen  # noqa: E402
import profiling  # noqa: E402
import replication  # noqa: E402
import ttp  # noqa: E402
import wrkdriver  # noqa: E402
from node import REPO, BenchNode  # noqa: E402
from node import free_port as node_free_port  # noqa: E402

# bench/decay.py (BENCH is first on sys.path), not the decay app.
import decay  # noqa: E402

RESULTS = BENCH / "results"
SCENARIOS = ("batch", "single", "query")
EXTRA_SCENARIOS = ("delivery", "federation", "decay", "ttp")
TARGETS = {
    "batch": ("facts_per_s", ">=", 10_000),
    "single": ("facts_per_s", ">=", 600),
    "query": ("p95_ms", "<=", 15),
}


# --- environment facts ----------------------------------------------------------------------


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {
        "cores": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "ram_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
    }


def versions() -> dict:
    found = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version}
    for dist in ("Django", "djangorestframework", "gunicorn", "django-q2", "psycopg"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        found["wrk"] = (out.stdout or out.stderr).split("[")[0].strip()
    return found


# --- PostgreSQL scratch database ------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(url: str, keep: bool):
    """A fresh database beside the one in ``url`` (dropped afterwards unless ``keep``)."""
    import psycopg

    parts = urlsplit(url)
    name = f"stigmem_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path="/" + name)), name, version
    finally:
        if not keep:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- scenarios ------------------------------------------------------------------------------


def repeated(times: int, run) -> dict:
    """Run a scenario ``times`` times; the median run (by its target metric) stands for all."""
    runs = [run() for _ in range(max(1, times))]
    if len(runs) == 1:
        return runs[0]
    metric = TARGETS[runs[0]["scenario"]][0]
    ranked = sorted(runs, key=lambda r: r.get(metric) or 0.0)
    median = dict(ranked[len(ranked) // 2])
    median["repeats"] = [
        {
            metric: r.get(metric),
            "requests_per_s": r["requests_per_s"],
            "latency_ms": r["latency_ms"],
            "cpu_s": r.get("cpu_s"),
        }
        for r in runs
    ]
    return median


class Scenario:
    """Runs one load against the node, with CPU accounting and optional profiling."""

    def __init__(self, args: argparse.Namespace, node: BenchNode, stamp: str, postgres: bool) -> None:
        self.args = args
        self.node = node
        self.stamp = stamp
        self.postgres = postgres
        self.runs = 0
        self.profiled = 0

    def tag(self, prefix: str) -> str:
        """A run tag never used before on this node: every write scenario run sends new facts."""
        self.runs += 1
        return f"{prefix}{self.stamp[-6:]}n{self.runs}"

    def measure(self, name: str, load) -> dict:
        waited = wait_for_quiet(self.args.quiet_wait, self.node.tree_pids())
        sampler = None
        if self.args.profile:
            master = self.node.gunicorn_master_pid()
            self.profiled += 1
            out = RESULTS / f"{self.stamp}-profile-{name}-{self.profiled}.raw.txt"
            # Both generators start ~warm-up (+1.5 s of process start) after this point.
            sampler = profiling.Sampler(master, out, self.args.warmup + 1.5, self.args.duration).start()
        node_pids = self.node.tree_pids()
        db_cpu0 = profiling.cpu_by_pid(profiling.postgres_pids()) if self.postgres else {}
        node_cpu0 = profiling.cpu_seconds(node_pids)
        self_cpu0 = _own_cpu()
        busy0 = profiling.machine_busy_seconds()
        wall0 = time.monotonic()
        result = load()
        wall = time.monotonic() - wall0
        node_cpu = profiling.cpu_seconds(node_pids) - node_cpu0
        loadgen_cpu = _own_cpu() - self_cpu0
        db_cpu = profiling.postgres_cpu_since(db_cpu0) if self.postgres else 0.0
        busy = profiling.machine_busy_seconds() - busy0
        result["cpu_s"] = {
            "wall": round(wall, 1),
            "node": round(node_cpu, 1),
            "loadgen": round(loadgen_cpu, 1),
            # Everything else the machine did meanwhile (other users' work skews the figures).
            "other": round(max(0.0, busy - node_cpu - loadgen_cpu - db_cpu), 1),
        }
        if self.postgres:
            result["cpu_s"]["postgres"] = round(db_cpu, 1)
        result["waited_for_quiet_s"] = waited
        if result["requests"]:
            result["node_cpu_ms_per_request"] = round(1000 * node_cpu / result["requests"] * _share(result, wall), 3)
        if sampler is not None:
            raw = sampler.finish()
            if raw is not None:
                summary_path = raw.with_name(raw.name.replace(".raw.txt", ".txt"))
                summary_path.write_text(profiling.summarize(raw))
                result["profile"] = str(summary_path.relative_to(REPO))
        return result

    def use_wrk(self) -> bool:
        if self.args.loadgen == "python":
            return False
        if self.args.loadgen == "wrk" and not wrkdriver.available():
            raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install wrk)")
        return wrkdriver.available()

    def batch(self, keys: list[str]) -> dict:
        spec = loadgen.LoadSpec(
            kind="batch",
            port=self.node.port,
            keys=tuple(keys),
            clients=self.args.batch_clients,
            processes=self.args.batch_clients,
            duration_s=self.args.duration,
            warmup_s=self.args.warmup,
            max_requests=self.args.max_requests // 100,
            run=self.tag("b"),
            batch_size=1000,
        )
        result = self.measure("batch", lambda: loadgen.run_load(spec))
        result.update(scenario="batch", clients=spec.clients, facts_per_request=1000)
        result["facts_per_s"] = result["requests_per_s"] * 1000
        return result

    def single(self, keys: list[str]) -> dict:
        clients = self.args.clients
        run = self.tag("s")
        if self.use_wrk():

            def load():
                return wrkdriver.run_wrk(
                    "single",
                    port=self.node.port,
                    keys=keys,
                    clients=clients,
                    duration_s=self.args.duration,
                    warmup_s=self.args.warmup,
                    max_requests=self.args.max_requests,
                    run=run,
                )
        else:
            spec = loadgen.LoadSpec(
                kind="single",
                port=self.node.port,
                keys=tuple(keys),
                clients=clients,
                processes=self.args.loadgen_processes,
                duration_s=self.args.duration,
                warmup_s=self.args.warmup,
                max_requests=self.args.max_requests,
                run=run,
            )

            def load():
                return loadgen.run_load(spec)

        result = self.measure("single", load)
        result.update(scenario="single", clients=clients, facts_per_request=1)
        result["facts_per_s"] = result["requests_per_s"]
        return result

    def query(self, keys: list[str], entities: int, clients: int) -> dict:
        if self.use_wrk():

            def load():
                return wrkdriver.run_wrk(
                    "query",
                    port=self.node.port,
                    keys=keys,
                    clients=clients,
                    duration_s=self.args.duration,
                    warmup_s=self.args.warmup,
                    max_requests=self.args.max_requests,
                    run="q",
                    entities=entities,
                )
        else:
            spec = loadgen.LoadSpec(
                kind="query",
                port=self.node.port,
                keys=tuple(keys),
                clients=clients,
                processes=self.args.loadgen_processes,
                duration_s=self.args.duration,
                warmup_s=self.args.warmup,
                max_requests=self.args.max_requests,
                entities=entities,
            )

            def load():
                return loadgen.run_load(spec)

        result = self.measure(f"query-c{clients}", load)
        result.update(scenario="query", clients=clients)
        result["p95_ms"] = result["latency_ms"]["p95"]
        return result


def wait_for_quiet(max_wait_s: float, own_pids: list[int], threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold`` of the machine for a second.

    The machine may be shared (other users' test runs): the figures are only meaningful when the
    node and the load generator have the cores to themselves. Returns the seconds waited.
    """
    started = time.monotonic()
    cores = os.cpu_count() or 1
    while time.monotonic() - started < max_wait_s:
        busy0, own0 = profiling.machine_busy_seconds(), profiling.cpu_seconds(own_pids)
        time.sleep(1.0)
        other = (profiling.machine_busy_seconds() - busy0) - (profiling.cpu_seconds(own_pids) - own0)
        if other / cores < threshold:
            break
    waited = time.monotonic() - started
    if waited > 2:
        print(f"  (waited {waited:.0f} s for the machine to be quiet)", flush=True)
    return round(waited, 1)


def _share(result: dict, wall: float) -> float:
    """CPU is counted over the whole run (warm-up included); requests over the window only."""
    return min(1.0, result["window_s"] / wall) if wall else 1.0


def _own_cpu() -> float:
    """CPU seconds of this process and its waited-for children (the Python generator, wrk)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def seed(node: BenchNode, facts: int, stamp: str, profile: bool) -> dict:
    """Write ``facts`` facts through assert_facts in a subprocess with the node's environment."""
    print(f"seeding {facts:,} facts (chunks of 1000 through stigmem.facts.assert_facts) ...", flush=True)
    command = [sys.executable, str(BENCH / "seed.py"), "--facts", str(facts)]
    proc = subprocess.Popen(command, cwd=REPO, env=node.env, stdout=subprocess.PIPE, text=True)
    sampler = None
    if profile:
        out = RESULTS / f"{stamp}-profile-seed.raw.txt"
        sampler = profiling.Sampler(proc.pid, out, 3.0, 30.0).start()
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("SEEDJSON "):
            result = json.loads(line.removeprefix("SEEDJSON "))
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0 or result is None:
        raise RuntimeError(f"seeding failed ({proc.returncode})")
    if sampler is not None:
        raw = sampler.finish()
        if raw is not None:
            summary = raw.with_name(raw.name.replace(".raw.txt", ".txt"))
            summary.write_text(profiling.summarize(raw))
            result["profile"] = str(summary.relative_to(REPO))
    return result


# --- reporting ------------------------------------------------------------------------------


def verdict(result: dict) -> tuple[str, str, bool | None]:
    metric, op, target = TARGETS[result["scenario"]]
    value = result.get(metric)
    if value is None:
        return metric, f"{op} {target:,}", None
    ok = value >= target if op == ">=" else value <= target
    return metric, f"{op} {target:,}", ok


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def table(results: list[dict], seeding: dict | None) -> str:
    header = (
        f"{'scenario':<10}{'clients':>8}{'req/s':>10}{'facts/s':>11}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}  {'target':<20}{'result':<7}cpu s: node/loadgen/other/wall"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        metric, target, ok = verdict(r)
        lat = r["latency_ms"]
        cpu = r.get("cpu_s", {})
        name = r["scenario"] + (f"*{len(r['repeats'])}" if "repeats" in r else "")
        cpu_text = f"{cpu.get('node', '-')}/{cpu.get('loadgen', '-')}/{cpu.get('other', '-')}/{cpu.get('wall', '-')}"
        if "postgres" in cpu:
            cpu_text += f" (postgres {cpu['postgres']})"
        lines.append(
            f"{name:<10}{r['clients']:>8}{fmt(r['requests_per_s']):>10}"
            f"{fmt(r.get('facts_per_s'), 0):>11}{fmt(lat['p50']):>9}{fmt(lat['p95']):>9}{fmt(lat['p99']):>9}"
            f"{r['errors']:>8}  {metric + ' ' + target:<20}{'PASS' if ok else 'MISS' if ok is False else '-':<7}"
            f"{cpu_text}"
        )
    if any("repeats" in r for r in results):
        lines.append("name*N: the median of N runs (all N are in the JSON)")
    if seeding:
        lines.append(
            f"seeding: {seeding['created']:,} facts in {seeding['seconds']:.1f} s = "
            f"{seeding['facts_per_s']:,.0f} facts/s ({seeding['via']}); stored in tenant: {seeding['stored']:,}"
        )
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark a throwaway stigmem node.", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help="comma list of: batch, single, query, delivery, federation, decay, ttp",
    )
    parser.add_argument("--facts", type=int, default=1_000_000, help="facts seeded before the query scenario")
    parser.add_argument("--database-url", help="PostgreSQL server URL; a scratch database is created beside it")
    parser.add_argument("--keep-db", action="store_true", help="keep the PostgreSQL scratch database")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: runnode's default)")
    parser.add_argument("--threads", type=int, help="threads per worker (default: runnode's default)")
    parser.add_argument("--no-qcluster", action="store_true", help="run the node without its task cluster")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=3.0, help="unrecorded seconds before each scenario")
    parser.add_argument("--max-requests", type=int, default=200_000, help="request cap per scenario")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients for single asserts")
    parser.add_argument("--batch-clients", type=int, default=2, help="concurrent clients for batches")
    parser.add_argument("--query-clients", default="1,4,16", help="comma list of client counts for queries")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario; the median run is reported")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--loadgen-processes", type=int, default=2, help="processes of the Python generator")
    parser.add_argument("--profile", action="store_true", help="sample the node with py-spy during each scenario")
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, help="max seconds to wait for other load to stop before a scenario"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the node's temporary data directory")
    parser.add_argument("--label", default="", help="added to the results file name")
    parser.add_argument("--delivery-subscriptions", default="1,10,100", help="delivery: subscription counts")
    parser.add_argument("--delivery-rate", type=float, default=20.0, help="delivery latency: single asserts per s")
    parser.add_argument("--delivery-seconds", type=float, default=10.0, help="delivery latency: seconds of asserts")
    parser.add_argument("--no-nomatch", action="store_true", help="delivery: skip the 10,000-subscription overhead")
    parser.add_argument("--federation-backlog", type=int, default=50_000, help="federation: facts to catch up on")
    parser.add_argument("--federation-rate", type=float, default=200.0, help="federation: writes/s, steady state")
    parser.add_argument("--federation-seconds", type=float, default=30.0, help="federation: steady-state seconds")
    parser.add_argument("--decay-facts", type=int, default=1_000_000, help="decay: facts seeded (half expire)")
    parser.add_argument("--decay-gap", type=float, default=5.0, help="decay: seconds between the two seeded halves")
    parser.add_argument("--decay-rate", type=float, default=50.0, help="decay: single asserts per s meanwhile")
    parser.add_argument("--decay-clients", type=int, default=4, help="decay: clients sending those asserts")
    parser.add_argument("--decay-baseline", type=float, default=10.0, help="decay: seconds of asserts before it")
    parser.add_argument("--decay-tail", type=float, default=3.0, help="decay: seconds of asserts after it")
    parser.add_argument("--ttp-facts", type=int, default=100_000, help="ttp: in-memory facts against the pack")
    parser.add_argument("--ttp-e2e-facts", type=int, default=20_000, help="ttp: facts written, then drained")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SCENARIOS) - set(EXTRA_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.delivery_subscriptions = [int(c) for c in args.delivery_subscriptions.split(",") if c.strip()]
    args.query_clients = [int(c) for c in args.query_clients.split(",") if c.strip()]
    if args.profile and not profiling.py_spy():
        parser.error("--profile needs py-spy (.venv/bin/pip install py-spy)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    database = "sqlite"
    report: dict = {
        "started_at": stamp,
        "machine": machine(),
        "versions": versions(),
        "command": " ".join([".venv/bin/python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "targets": {k: f"{m} {op} {t}" for k, (m, op, t) in TARGETS.items()},
    }
    data_dir = Path(tempfile.mkdtemp(prefix="stigmem-bench-"))
    results: list[dict] = []
    seeding = None
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            database_url = None
            if args.database_url:
                database_url, db_name, pg_version = stack.enter_context(
                    scratch_database(args.database_url, args.keep_db)
                )
                database = "postgresql"
                report["versions"]["postgresql"] = pg_version
                report["scratch_database"] = db_name
            if set(args.only) - {"federation", "ttp"}:
                node = stack.enter_context(
                    BenchNode(
                        data_dir,
                        database_url=database_url,
                        workers=args.workers,
                        threads=args.threads,
                        qcluster=not args.no_qcluster,
                        extra_env=delivery.NODE_ENV if "delivery" in args.only else None,
                    )
                )
                web = node.web_settings()
                report["settings"] = {
                    "database": database,
                    "workers": web["workers"],
                    "threads": web["threads"],
                    "qcluster": not args.no_qcluster,
                    "auth": "on (one API key per client)",
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "loadgen": args.loadgen
                    if args.loadgen != "auto"
                    else ("wrk" if wrkdriver.available() else "python"),
                }
                print(
                    f"node on 127.0.0.1:{node.port} ({database}, {web['workers']} workers x {web['threads']} threads), "
                    f"data in {data_dir}",
                    flush=True,
                )
                keys = node.create_keys(max([args.clients, args.batch_clients, *args.query_clients]), ["read", "write"])
                scenario = Scenario(args, node, stamp, postgres=database == "postgresql")
                if "batch" in args.only:
                    print("batch: POST /v1/facts/batch x1000 ...", flush=True)
                    results.append(repeated(args.repeat, lambda: scenario.batch(keys)))
                if "single" in args.only:
                    print(f"single: POST /v1/facts, {args.clients} clients ...", flush=True)
                    results.append(repeated(args.repeat, lambda: scenario.single(keys)))
                if "query" in args.only:
                    seeding = seed(node, args.facts, stamp, args.profile)
                    entities = seeding["entities"]
                    for clients in args.query_clients:
                        print(f"query: GET /v1/facts?entity=..., {clients} clients ...", flush=True)
                        results.append(repeated(args.repeat, lambda c=clients: scenario.query(keys, entities, c)))
                if "delivery" in args.only:
                    receiver = stack.enter_context(delivery.Receiver(node_free_port(), data_dir / "receiver.log"))
                    report["delivery"] = delivery.run(args, node, receiver, lambda: scenario.single(keys), stamp)
                if "decay" in args.only:
                    report["decay"] = decay.run(args, node, stamp, wait_for_quiet)
            if "federation" in args.only:
                urls = (database_url, None)
                if database_url:
                    urls = (database_url, stack.enter_context(scratch_database(args.database_url, args.keep_db))[0])
                (data_dir / "source").mkdir()
                (data_dir / "sink").mkdir()
                report["federation"] = replication.run(args, data_dir, urls, stamp)
            if "ttp" in args.only:
                report["ttp"] = ttp.run_subprocess(args)
    finally:
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
    report["results"] = results
    report["seeding"] = seeding
    report["wall_s"] = round(time.monotonic() - started, 1)
    text = table(results, seeding) if results or seeding else ""
    if "delivery" in report:
        text = (text + "\n\n" if text else "") + delivery.table(report["delivery"])
    if "decay" in report:
        text = (text + "\n\n" if text else "") + decay.table(report["decay"])
    if "federation" in report:
        text = (text + "\n\n" if text else "") + replication.table(report["federation"])
    if "ttp" in report:
        text = (text + "\n\n" if text else "") + ttp.table(report["ttp"])
    print()
    print(text)
    label = f"-{args.label}" if args.label else ""
    out = RESULTS / f"{stamp}-{database}{label}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\nresults: {out.relative_to(REPO)}  (total {report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
