"""Management commands: ``bootstrap_key``, and ``runnode`` started for real as a subprocess."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from stigmem.auth import hash_key
from stigmem.models import ApiKey
from tests.e2e.processes import Node, http, live_in_groups, manage_shell, wait_until

ALL_PERMISSIONS = ["admin", "admin:federation", "audit.read", "federate", "read", "write"]


# --- bootstrap_key ------------------------------------------------------------------------------


def bootstrap(*args: str) -> str:
    out = StringIO()
    call_command("bootstrap_key", *args, stdout=out)
    return out.getvalue()


def printed_key(output: str) -> str:
    match = re.search(r"^api key:\s+(\S+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


def me(raw_key: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client.get("/v1/me")


def test_bootstrap_key_creates_an_admin_key_once(db):
    assert not ApiKey.objects.exists()
    output = bootstrap()
    raw = printed_key(output)
    assert re.search(r"^tenant:\s+default$", output, re.MULTILINE)
    key = ApiKey.objects.get()
    assert key.key_hash == hash_key(raw)
    assert key.tenant == "default"
    assert sorted(key.permissions) == ALL_PERMISSIONS
    assert key.expires_at is None
    response = me(raw)
    assert response.status_code == 200
    assert response.json() == {"entity_uri": key.entity_uri, "permissions": ALL_PERMISSIONS, "tenant_id": "default"}
    assert f"entity:   {key.entity_uri}" in output

    again = bootstrap()
    assert "nothing created" in again
    assert "api key" not in again
    assert ApiKey.objects.count() == 1


def test_bootstrap_key_force_creates_another(db):
    first = printed_key(bootstrap())
    second = printed_key(bootstrap("--force"))
    assert first != second
    assert ApiKey.objects.filter(tenant="default").count() == 2
    assert me(first).status_code == 200
    assert me(second).status_code == 200


def test_bootstrap_key_for_another_tenant(db):
    bootstrap()
    output = bootstrap("--tenant", "acme", "--entity", "stigmem://acme/agent/ops")
    raw = printed_key(output)
    key = ApiKey.objects.get(tenant="acme")
    assert key.entity_uri == "stigmem://acme/agent/ops"
    assert me(raw).json() == {
        "entity_uri": "stigmem://acme/agent/ops",
        "permissions": ALL_PERMISSIONS,
        "tenant_id": "acme",
    }
    assert ApiKey.objects.filter(tenant="default").count() == 1
    assert "nothing created" in bootstrap("--tenant", "acme")
    assert ApiKey.objects.count() == 2


def test_bootstrap_key_ignores_non_admin_and_revoked_keys(make_client):
    make_client(["read", "write"])
    revoked = make_client(["admin"])
    ApiKey.objects.filter(pk=revoked.key.pk).update(revoked_at=timezone.now())
    raw = printed_key(bootstrap())
    assert me(raw).status_code == 200
    assert ApiKey.objects.count() == 3


# --- runnode ------------------------------------------------------------------------------------


PROBE = """
import json, os
from django.contrib.auth import authenticate
from django_q.models import Schedule
from django_q.tasks import async_task
from stigmem.models import ApiKey, NodeIdentity
print(json.dumps({
    "schedules": sorted(Schedule.objects.values_list("name", "func")),
    "admin_login_ok": authenticate(username="admin", password=os.environ["PROBE_PASSWORD"]) is not None,
    "keys": [[k.tenant, k.permissions] for k in ApiKey.objects.all()],
    "node_id": NodeIdentity.objects.get(pk=1).node_id,
}))
async_task("stigmem.tasks.heartbeat")
"""


def test_runnode_end_to_end(tmp_path):
    first = Node(tmp_path, "first")
    second = Node(tmp_path, "second")
    try:
        first.start()
        health = first.wait_healthy()
        assert health["status"] == "ok" and health["db"] == "ok"
        out = wait_until(lambda: "bootstrap API key" in first.stdout() and first.stdout(), 30, "banner", first.log)
        key_match = re.search(r"bootstrap API key \(shown once\): (\S+)", out)
        login_match = re.search(r"admin login \(shown once\): admin / (\S+)", out)
        assert key_match and login_match, out
        raw_key, password = key_match.group(1), login_match.group(1)
        assert "created schedules: " in out
        assert "stigmem.heartbeat" in out and "stigmem.sweep_logs" in out
        node_line = re.search(r"^stigmem node (stigmem:node:\S+)$", out, re.MULTILINE)
        assert node_line, out

        # Both halves of the unit are running, each in its own process group.
        commands = " | ".join(p["cmd"] for p in first.children())
        assert "gunicorn" in commands and "qcluster" in commands, commands
        # Background work runs at a lower CPU priority than the web server (STIGMEM_Q_NICE).
        niceness = {("qcluster" if "qcluster" in p["cmd"] else "web"): p["nice"] for p in first.children()}
        assert niceness["qcluster"] == min(19, niceness["web"] + 5), niceness
        # ... and its writes are background writes: a decay sweep does not end chunks early for them.
        background = {
            ("qcluster" if "qcluster" in p["cmd"] else "web"): b"STIGMEM_BACKGROUND_PROCESS=true"
            in Path(f"/proc/{p['pid']}/environ").read_bytes().split(b"\0")
            for p in first.children()
        }
        assert background == {"qcluster": True, "web": False}, background
        assert len(first.groups) == 3
        assert len(live_in_groups(first.groups - {first.proc.pid})) >= 3  # gunicorn master + worker(s), qcluster

        # The node serves the API with the printed key.
        fact = {
            "entity": "stigmem://e2e/user/zoe",
            "relation": "memory:mood",
            "value": {"type": "string", "v": "curious"},
            "source": "stigmem://e2e/agent/test",
        }
        status, created = http("POST", f"{first.url}/v1/facts", key=raw_key, body=fact)
        assert status == 201, created
        status, got = http("GET", f"{first.url}/v1/facts/{created['cid']}", key=raw_key)
        assert status == 200 and got["id"] == created["id"]
        status, denied = http("GET", f"{first.url}/v1/facts")
        assert status == 401, denied
        status, known = http("GET", f"{first.url}/.well-known/stigmem")
        assert status == 200 and known["node_id"] == node_line.group(1)

        # Schedules exist in the node's own database, the admin login works, and the cluster runs tasks.
        probe = json.loads(manage_shell(first.env, PROBE, PROBE_PASSWORD=password).strip().splitlines()[-1])
        assert ["stigmem.heartbeat", "stigmem.tasks.heartbeat"] in probe["schedules"]
        assert ["stigmem.sweep_logs", "stigmem.tasks.sweep_logs"] in probe["schedules"]
        assert probe["admin_login_ok"] is True
        assert probe["keys"] == [["default", ALL_PERMISSIONS]]
        assert probe["node_id"] == node_line.group(1)

        def heartbeat_seen():
            status, body = http("GET", f"{first.url}/healthz")
            return status == 200 and body["worker_heartbeat_age_s"] is not None

        wait_until(heartbeat_seen, 90, "a heartbeat run by the qcluster", first.log)

        # Ctrl-C stops the whole unit cleanly.
        groups = set(first.groups)
        assert first.stop() == 0, first.log()
        wait_until(lambda: not live_in_groups(groups), 30, "gunicorn and qcluster to exit", first.log)
        assert "runnode: stopped" in first.stdout()

        # A second start provisions nothing new, and the first key still works (same secret, same db).
        second.start()
        second.wait_healthy()
        out2 = wait_until(lambda: "admin:" in second.stdout() and second.stdout(), 30, "banner", second.log)
        assert node_line.group(0) in out2
        assert "shown once" not in out2
        assert "created schedules" not in out2
        assert raw_key not in out2 and password not in out2
        status, listed = http("GET", f"{second.url}/v1/facts", key=raw_key)
        assert status == 200
        assert [f["id"] for f in listed["facts"]] == [created["id"]]
        probe = json.loads(manage_shell(second.env, PROBE, PROBE_PASSWORD=password).strip().splitlines()[-1])
        assert probe["keys"] == [["default", ALL_PERMISSIONS]]
        groups = set(second.groups)
        assert second.stop() == 0, second.log()
        wait_until(lambda: not live_in_groups(groups), 30, "gunicorn and qcluster to exit", second.log)
    finally:
        first.kill()
        second.kill()
