"""Webhook delivery with real processes on 127.0.0.1: a worker SIGKILLed mid-delivery, and a receiver that is down.

Each node is ``runnode --no-qcluster`` (web only) plus separate worker processes, so a test can
kill the workers alone:
- ``qcluster`` runs the log consumers (dispatch turns facts into deliveries) and the delivery
  task kicked on commit;
- ``deliver_subscriptions --loop --interval 0.5`` keeps delivering. It stands in for the
  per-minute schedule, whose first run after a qcluster restart comes 30-90 s later (the django-q2
  scheduler wakes every 30 s): too slow for a bounded test, and not what is under test here.

Short timings come from the node's environment: a 2 s webhook timeout and a 2 s lease margin
(claims lease for 6 s), 1 s retries, and for the circuit a threshold of 3 and a 1 s cool-down.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

from standardwebhooks.webhooks import Webhook

from tests.e2e.processes import Node, Proc, free_port, http, port_open, wait_until

RECEIVER = Path(__file__).with_name("receiver.py")

FAST = {
    "STIGMEM_WEBHOOK_ALLOW_PRIVATE": "true",
    "STIGMEM_WEBHOOK_TIMEOUT_S": "2",
    "STIGMEM_DELIVERY_LEASE_MARGIN_S": "2",
    "STIGMEM_SUBSCRIPTION_RETRY_SCHEDULE": ",".join(["1"] * 30),
    "STIGMEM_RATE_LIMIT_WRITE_BURST": "100000",
    "STIGMEM_RATE_LIMIT_READ_BURST": "100000",
}


def start_receiver(tmp_path: Path, port: int, out: Path, delay_s: float) -> Proc:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    receiver = Proc([sys.executable, str(RECEIVER), str(port), str(out), str(delay_s)], env, tmp_path, "receiver")
    receiver.start()
    wait_until(lambda: port_open(port), 30, "the receiver to listen", receiver.log)
    return receiver


def start_workers(node: Node, generation: int) -> list[Proc]:
    workers = [
        node.manage(f"qcluster-{generation}", "qcluster"),
        node.manage(f"deliver-{generation}", "deliver_subscriptions", "--loop", "--interval", "0.5"),
    ]
    for worker in workers:
        worker.start()
    return workers


def received(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # a line being written is skipped


def fact_ids_seen(path: Path) -> set[str]:
    return {json.loads(r["body"])["fact"]["id"] for r in received(path)}


def subscribe(node: Node, key: str, port: int) -> dict:
    body = {"target": "team", "on_change": "webhook", "delivery_address": f"http://127.0.0.1:{port}/hook"}
    status, sub = http("POST", f"{node.url}/v1/subscriptions", key=key, body=body)
    assert status == 201, sub
    assert sub["signing_secret"].startswith("whsec_") and sub["circuit_open"] is False
    return sub


def assert_facts(node: Node, key: str, start: int, count: int) -> list[str]:
    facts = [
        {
            "entity": f"stigmem://e2e/item/{i}",
            "relation": "memory:count",
            "value": {"type": "number", "v": i},
            "source": "stigmem://e2e/agent/writer",
            "scope": "team",
        }
        for i in range(start, start + count)
    ]
    status, body = http("POST", f"{node.url}/v1/facts/batch", key=key, body={"facts": facts}, timeout=60)
    assert status == 200 and body["accepted"] == count, body
    return [r["fact"]["id"] for r in body["results"]]


def all_events(node: Node, key: str, sub_id: str) -> list[dict]:
    events, cursor = [], None
    while True:
        query = f"?limit=500&cursor={cursor}" if cursor else "?limit=500"
        status, page = http("GET", f"{node.url}/v1/subscriptions/{sub_id}/events{query}", key=key)
        assert status == 200, page
        events += page["events"]
        cursor = page["cursor"]
        if not cursor:
            return events


def check_deliveries(path: Path, secret: str, sub_id: str, expected: set[str]) -> int:
    """Every expected fact arrived, every copy of one event has the same id, every signature verifies;
    returns the number of duplicate requests."""
    webhook = Webhook(secret)
    ids_by_fact: dict[str, set[str]] = defaultdict(set)
    records = received(path)
    for record in records:
        headers = record["headers"]
        payload = webhook.verify(record["body"], headers)
        assert payload["subscription_id"] == sub_id
        assert payload["event_id"] == headers["webhook-id"] == headers["x-stigmem-event-id"]
        ids_by_fact[payload["fact"]["id"]].add(headers["webhook-id"])
    assert set(ids_by_fact) == expected
    assert {fact: ids for fact, ids in ids_by_fact.items() if len(ids) != 1} == {}
    return len(records) - len(expected)


def kill_all(*procs: Proc) -> None:
    for proc in procs:
        proc.kill()


def test_every_event_arrives_after_worker_sigkill(tmp_path):
    port = free_port()
    inbox = tmp_path / "received.jsonl"
    node = Node(tmp_path, "web", "--no-qcluster", **FAST)
    receiver: Proc | None = None
    workers: list[Proc] = []
    try:
        receiver = start_receiver(tmp_path, port, inbox, delay_s=0.02)  # slow enough that requests are in flight
        node.start()
        node.wait_healthy()
        key = node.bootstrap_key()
        sub = subscribe(node, key, port)
        workers = start_workers(node, 1)

        fact_ids: list[str] = []
        for start in range(0, 1000, 100):
            fact_ids += assert_facts(node, key, start, 100)
        assert len(set(fact_ids)) == 1000

        def log() -> str:
            return "\n".join(p.log() for p in [node, receiver, *workers])

        # Every fact became a queued event before the workers die; then kill them mid-delivery.
        wait_until(lambda: len(all_events(node, key, sub["id"])) == 1000, 60, "1000 queued events", log, 0.5)
        wait_until(lambda: len(received(inbox)) >= 100, 60, "the first deliveries", log, 0.05)
        kill_all(*workers)
        seen_before = fact_ids_seen(inbox)
        statuses = [e["delivery_status"] for e in all_events(node, key, sub["id"])]
        assert len(statuses) == 1000
        assert len(seen_before) < 1000
        assert "delivering" in statuses  # claims the dead workers held: only their lease brings them back

        workers += start_workers(node, 2)
        wait_until(lambda: fact_ids_seen(inbox) == set(fact_ids), 120, "every fact at the receiver", log, 0.5)

        duplicates = check_deliveries(inbox, sub["signing_secret"], sub["id"], set(fact_ids))
        print(f"{len(seen_before)} facts seen before the kill; {duplicates} duplicate requests")

        def all_delivered():
            return all(e["delivery_status"] == "delivered" for e in all_events(node, key, sub["id"]))

        wait_until(all_delivered, 30, "every event settled as delivered", log, 0.5)
    finally:
        kill_all(*workers, node, *([receiver] if receiver else []))


def test_circuit_opens_queues_and_drains(tmp_path):
    port = free_port()  # nothing listens here until the receiver starts
    inbox = tmp_path / "received.jsonl"
    env = {**FAST, "STIGMEM_SUBSCRIPTION_CIRCUIT_THRESHOLD": "3", "STIGMEM_SUBSCRIPTION_CIRCUIT_COOLDOWN_S": "1"}
    node = Node(tmp_path, "web", "--no-qcluster", **env)
    receiver: Proc | None = None
    workers: list[Proc] = []
    try:
        node.start()
        node.wait_healthy()
        key = node.bootstrap_key()
        sub = subscribe(node, key, port)
        workers = start_workers(node, 1)

        def log() -> str:
            return "\n".join(p.log() for p in [node, *workers])

        fact_ids = assert_facts(node, key, 0, 20)

        def circuit_open():
            status, body = http("GET", f"{node.url}/v1/subscriptions/{sub['id']}", key=key)
            assert status == 200, body
            return body if body["circuit_open"] else None

        opened = wait_until(circuit_open, 60, "the circuit to open", log, 0.2)
        assert opened["consecutive_failures"] >= 3 and opened["status"] == "active"

        # While the circuit is open, new events queue too: nothing is dropped, nothing is dead-lettered.
        fact_ids += assert_facts(node, key, 20, 5)
        wait_until(lambda: len(all_events(node, key, sub["id"])) == 25, 30, "25 queued events", log)
        queued = all_events(node, key, sub["id"])
        assert {e["fact_id"] for e in queued} == set(fact_ids)
        assert {e["delivery_status"] for e in queued} <= {"pending", "delivering"}
        assert all(e["delivered_at"] is None for e in queued)
        assert sum(e["delivery_attempts"] for e in queued) >= 3
        assert any("network error" in e["last_error"] for e in queued)
        assert circuit_open()  # still open: probes keep failing

        # The receiver comes up: a half-open probe succeeds, the circuit closes, the queue drains.
        receiver = start_receiver(tmp_path, port, inbox, delay_s=0)
        wait_until(lambda: fact_ids_seen(inbox) == set(fact_ids), 60, "every queued event at the receiver", log, 0.5)
        check_deliveries(inbox, sub["signing_secret"], sub["id"], set(fact_ids))

        def closed_and_drained():
            status, body = http("GET", f"{node.url}/v1/subscriptions/{sub['id']}", key=key)
            assert status == 200, body
            events = all_events(node, key, sub["id"])
            return (
                body if not body["circuit_open"] and all(e["delivery_status"] == "delivered" for e in events) else None
            )

        closed = wait_until(closed_and_drained, 30, "the circuit to close", log, 0.5)
        assert closed["consecutive_failures"] == 0 and closed["status"] == "active"
        assert closed["last_delivered_at"] is not None
    finally:
        kill_all(*workers, node, *([receiver] if receiver else []))
