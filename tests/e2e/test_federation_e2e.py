"""Two real nodes on 127.0.0.1 federate: connect, approve on both sides, replicate both ways.

Each node is ``runnode --no-qcluster`` (web only) with its own SQLite database. The operator
steps are the real management commands run as separate processes: ``federation connect`` on
node A (it posts A's declaration to B with a key B's operator handed out, and records B as a
pending peer), ``federation fingerprint`` on each node (the out-of-band key check), approval
by command on A and over the API on B, and ``pull_peers`` for the pulls the per-minute schedule
would otherwise make (its timing is not what is under test here).
"""

from __future__ import annotations

import re

from tests.e2e.processes import Node, http, wait_until

FEDERATION = {
    "STIGMEM_FEDERATION_ENABLED": "true",
    # Both nodes live on 127.0.0.1: allow private peer addresses, as a development setup does.
    "STIGMEM_FEDERATION_ALLOW_PRIVATE": "true",
}
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
# Values whose CIDs the reference gets wrong or that need care on the wire.
TEXT = 'café ☕ 日本語 — "quoted"\nsecond line'


def run(node: Node, name: str, *args: str, expect: int = 0) -> str:
    proc = node.manage(name, *args)
    proc.start()
    code = proc.proc.wait(timeout=180)
    assert code == expect, f"{' '.join(args)} exited {code}, expected {expect}\n{proc.log()}"
    return proc.stdout() + proc.err_path.read_text()


def own_fingerprint(node: Node, name: str) -> str:
    match = FINGERPRINT.search(run(node, name, "federation", "fingerprint"))
    assert match, "federation fingerprint printed no sha256: fingerprint"
    return match.group(0)


def only_peer(node: Node, key: str) -> dict:
    status, body = http("GET", f"{node.url}/v1/federation/peers", key=key)
    assert status == 200, body
    assert len(body["peers"]) == 1, body
    return body["peers"][0]


def write(node: Node, key: str, prefix: str) -> dict[str, dict]:
    """Facts of every tricky kind on ``node``; returns the stored records by name."""
    bodies = {
        "integer": {"relation": "memory:count", "value": {"type": "number", "v": 42}, "scope": "company"},
        "float": {"relation": "memory:score", "value": {"type": "number", "v": 42.5}, "scope": "company"},
        "integral_float": {"relation": "memory:ratio", "value": {"type": "number", "v": 42.0}, "scope": "public"},
        "text": {"relation": "memory:bio", "value": {"type": "text", "v": TEXT}, "scope": "company"},
        "boolean": {"relation": "memory:active", "value": {"type": "boolean", "v": True}, "scope": "public"},
        # Never leaves the node: local scope is outside every agreement.
        "local": {"relation": "memory:secret", "value": {"type": "string", "v": "stays home"}, "scope": "local"},
    }
    stored = {}
    for name, body in bodies.items():
        body = {**body, "entity": f"stigmem://{prefix}/user/alice", "source": f"stigmem://{prefix}/agent/writer"}
        status, record = http("POST", f"{node.url}/v1/facts", key=key, body=body)
        assert status == 201, record
        stored[name] = record
    return stored


def assert_replicated(origin: Node, origin_facts: dict[str, dict], receiver: Node, receiver_key: str) -> None:
    origin_id = http("GET", f"{origin.url}/.well-known/stigmem")[1]["node_id"]
    for name, original in origin_facts.items():
        status, copy = http("GET", f"{receiver.url}/v1/facts/{original['id']}", key=receiver_key)
        if name.endswith("local"):
            assert status == 404, f"a local-scope fact was replicated: {copy}"
            continue
        assert status == 200, f"{name}: {copy}"
        assert copy["cid"] == original["cid"], name
        # Same type on the other side: 42 stays an integer, 42.0 a float, text byte for byte.
        assert copy["value"] == original["value"], name
        assert type(copy["value"]["v"]) is type(original["value"]["v"]), name
        assert copy["received_from"] == origin_id and copy["origin_node_id"] == origin_id, name
        assert copy["timestamp"] == original["timestamp"], name
        status, check = http("POST", f"{receiver.url}/v1/facts/{original['id']}/verify-cid", key=receiver_key)
        assert status == 200 and check["cid_valid"] is True, check


def test_two_nodes_connect_approve_replicate_both_ways_and_tombstone(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Node(tmp_path / "a", "node-a", "--no-qcluster", **FEDERATION)
    b = Node(tmp_path / "b", "node-b", "--no-qcluster", **FEDERATION)
    try:
        a.start()
        b.start()
        a.wait_healthy()
        b.wait_healthy()
        key_a, key_b = a.bootstrap_key(), b.bootstrap_key()

        # A's operator connects to B with a key B's operator handed out.
        out = run(a, "connect", "federation", "connect", b.url, "--api-key", key_b, "--scopes", "company", "public")
        assert len(set(FINGERPRINT.findall(out))) == 2, f"connect must show both fingerprints:\n{out}"
        peer_b_on_a, peer_a_on_b = only_peer(a, key_a), only_peer(b, key_b)
        assert peer_b_on_a["status"] == peer_a_on_b["status"] == "pending_approval"
        assert peer_b_on_a["allowed_scopes"] == peer_a_on_b["allowed_scopes"] == ["company", "public"]

        # Each operator reads their own fingerprint and tells the other out of band.
        fingerprint_a, fingerprint_b = own_fingerprint(a, "fingerprint-a"), own_fingerprint(b, "fingerprint-b")
        run(a, "approve", "federation", "approve", peer_b_on_a["peer_id"], "--fingerprint", fingerprint_b)

        # Until B approves A too, B refuses A's tokens: the pull fails (exit 1, cron sees it).
        write_before = write(b, key_b, "early")
        out = run(a, "pull-early", "pull_peers", "--peer", peer_b_on_a["peer_id"], expect=1)
        assert "peer_not_approved" in out, out
        status, _ = http("GET", f"{a.url}/v1/facts/{write_before['integer']['id']}", key=key_a)
        assert status == 404

        status, approved = http(
            "POST",
            f"{b.url}/v1/federation/peers/{peer_a_on_b['peer_id']}/approve",
            key=key_b,
            body={"pubkey_fingerprint": fingerprint_a},
        )
        assert status == 200 and approved["status"] == "active", approved
        assert only_peer(a, key_a)["status"] == "active"

        facts_a = write(a, key_a, "node-a")
        facts_b = write(b, key_b, "node-b")
        # --peer pulls at once: A's refused pull above put B in back-off for the scheduled cycle.
        run(a, "pull-a", "pull_peers", "--peer", peer_b_on_a["peer_id"])
        run(b, "pull-b", "pull_peers")
        assert_replicated(a, facts_a, b, key_b)
        # The facts B wrote while A was refused arrive now, with the rest.
        assert_replicated(b, {**facts_b, **{f"early-{k}": v for k, v in write_before.items()}}, a, key_a)

        # A second pull finds nothing new and duplicates nothing.
        status, before = http("GET", f"{b.url}/v1/facts?source=stigmem://node-a/agent/writer&limit=500", key=key_b)
        run(b, "pull-b-again", "pull_peers", "--peer", peer_a_on_b["peer_id"])
        status, after = http("GET", f"{b.url}/v1/facts?source=stigmem://node-a/agent/writer&limit=500", key=key_b)
        assert [f["id"] for f in after["facts"]] == [f["id"] for f in before["facts"]]

        # A tombstone on A replicates, verified with A's key, and hides the entity on B too.
        entity = "stigmem://node-a/user/alice"
        status, tombstone = http("POST", f"{a.url}/v1/tombstones", key=key_a, body={"entity_uri": entity, "scope": "*"})
        assert status == 201, tombstone
        status, visible = http("GET", f"{b.url}/v1/facts?entity={entity}", key=key_b)
        assert status == 200 and visible["facts"], "the entity's facts should be on B before the tombstone arrives"
        out = run(b, "pull-b-tombstone", "pull_peers", "--peer", peer_a_on_b["peer_id"])
        assert "tombstones=1" in out, out
        # Web processes other than the one that stored it see a tombstone within STIGMEM_TOMBSTONE_CACHE_S (2 s).
        hidden = wait_until(
            lambda: (r := http("GET", f"{b.url}/v1/facts?entity={entity}", key=key_b)[1])["facts"] == [] and r,
            10,
            "the replicated tombstone to hide the entity on B",
        )
        assert hidden["tombstone_notices"], hidden
        wait_until(
            lambda: http("GET", f"{b.url}/v1/facts/{facts_a['integer']['id']}", key=key_b)[0] == 404,
            10,
            "every web process of B to hide the tombstoned fact",
        )
        status, on_b = http("GET", f"{b.url}/v1/tombstones/{entity}", key=key_b)
        assert status == 200 and on_b["tombstoned"] is True
        assert [t["id"] for t in on_b["tombstones"]] == [tombstone["id"]]
        # B's own facts about its own alice are untouched.
        status, own = http("GET", f"{b.url}/v1/facts?entity=stigmem://node-b/user/alice", key=key_b)
        assert status == 200 and own["facts"]
    finally:
        a.kill()
        b.kill()
