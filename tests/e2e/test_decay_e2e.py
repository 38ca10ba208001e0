"""A large decay sweep runs as a job on the node's real django-q2 cluster, not in the request.

One ``runnode`` (gunicorn + qcluster) with a tiny ``STIGMEM_ASYNC_JOB_THRESHOLD``: the sweep answers
202 with a job, every web process is then killed (SIGKILL; gunicorn starts new ones), and the job
still completes on the cluster with its counts, visible through the API.
"""

from __future__ import annotations

import os
import signal

from tests.e2e.processes import Node, http, process_table, wait_until

FACTS = 30


def test_an_async_sweep_completes_on_the_cluster_after_the_web_worker_dies(tmp_path):
    (tmp_path / "node").mkdir()
    node = Node(tmp_path / "node", "node", STIGMEM_ASYNC_JOB_THRESHOLD="5")
    try:
        node.start()
        node.wait_healthy()
        key = node.bootstrap_key()
        facts = [
            {
                "entity": f"stigmem://e2e/item/{i}",
                "relation": "memory:note",
                "value": {"type": "string", "v": f"note {i}"},
                "source": "stigmem://e2e/agent/writer",
            }
            for i in range(FACTS)
        ]
        status, body = http("POST", f"{node.url}/v1/facts/batch", key=key, body={"facts": facts})
        assert status == 200 and body["accepted"] == FACTS, body

        status, queued = http("POST", f"{node.url}/v1/decay/sweep?ttl_seconds=0", key=key)
        assert status == 202, queued
        assert queued["status"] == "pending" and queued["estimated_s"] >= 1

        # Every web process goes away (gunicorn starts new ones); the job lives in the database and
        # the cluster runs it.
        master = next(p for p in node.children() if "gunicorn" in p["cmd"])
        workers = [p["pid"] for p in process_table() if p["ppid"] == master["pid"]]
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)

        def finished():
            try:
                status, job = http("GET", f"{node.url}/v1/decay/jobs/{queued['job_id']}", key=key, timeout=3)
            except OSError:
                return None
            return job if status == 200 and job["status"] in ("done", "failed") else None

        job = wait_until(finished, 120, "the decay job to finish on the cluster", node.log)
        assert job["status"] == "done", job
        assert (job["scanned"], job["decayed"], job["progress"]) == (FACTS, FACTS, 1.0)
        assert job["started_at"] and job["completed_at"]

        status, page = http("GET", f"{node.url}/v1/facts?relation=memory:note&limit=500", key=key)
        assert status == 200 and page["facts"] == []
        status, expired = http(
            "GET",
            f"{node.url}/v1/facts?relation=memory:note&limit=500&include_expired=true&include_contradicted=true",
            key=key,
        )
        assert status == 200 and len(expired["facts"]) == FACTS
        assert all(f["expired"] for f in expired["facts"])
    finally:
        node.kill()
