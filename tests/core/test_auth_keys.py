"""API-key authentication, permissions, the auth-off development mode and /v1/auth/keys (WIRE §1, §4.1)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from rest_framework.test import APIClient

from stigmem.auth import hash_key
from stigmem.keys import issue_key
from stigmem.models import ApiKey, Fact

BASE_DIR = Path(__file__).resolve().parents[2]
SETTINGS_FILE = BASE_DIR / "stigmem" / "settings.py"
KEY_FIELDS = {"id", "entity_uri", "permissions", "description", "created_at", "expires_at", "tenant_id"}

FACT = {
    "entity": "stigmem://test/user/alice",
    "relation": "memory:likes",
    "value": {"type": "string", "v": "tea"},
    "source": "stigmem://test/agent/writer",
    "scope": "team",
}


def bearer(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def assert_401(response) -> None:
    assert response.status_code == 401, response.content
    assert response["WWW-Authenticate"] == "Bearer"
    body = response.json()
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], str) and body["detail"]


# --- authentication ---------------------------------------------------------------------------


class TestAuthentication:
    def test_no_header_is_401_with_bearer_challenge(self, anon, db):
        assert_401(anon.get("/v1/me"))
        assert_401(anon.get("/v1/facts"))
        response = anon.post("/v1/facts", FACT, format="json")
        assert_401(response)
        assert Fact.objects.count() == 0

    @pytest.mark.parametrize(
        "header",
        ["Basic dXNlcjpwYXNz", "Token abcdefabcdefabcdefabcdefabcdefabcdef", "Bearer", "Bearer    ", "sk_only_a_key"],
    )
    def test_bad_scheme_or_empty_token_is_401(self, client, header):
        other = APIClient()
        other.credentials(HTTP_AUTHORIZATION=header)
        assert_401(other.get("/v1/me"))

    def test_scheme_is_case_insensitive(self, client):
        other = APIClient()
        other.credentials(HTTP_AUTHORIZATION=f"bearer {client.raw_key}")
        response = other.get("/v1/me")
        assert response.status_code == 200
        assert response.json()["entity_uri"] == "stigmem://test/agent/tester"

    def test_unknown_key_is_401(self, client):
        assert_401(bearer("sk_" + "x" * 40).get("/v1/me"))
        # A near miss of a real key is still unknown.
        assert_401(bearer(client.raw_key[:-1]).get("/v1/me"))

    def test_revoked_key_is_401(self, client):
        assert client.get("/v1/me").status_code == 200
        ApiKey.objects.filter(pk=client.key.pk).update(revoked_at=timezone.now())
        assert_401(client.get("/v1/me"))

    def test_expired_key_is_401(self, db):
        issued = issue_key(
            tenant="default",
            entity_uri="stigmem://test/agent/old",
            permissions=["read"],
            expires_at=timezone.now() - timedelta(seconds=1),
        )
        assert_401(bearer(issued.raw_key).get("/v1/me"))

    def test_key_not_yet_expired_works(self, db):
        issued = issue_key(
            tenant="default",
            entity_uri="stigmem://test/agent/fresh",
            permissions=["read"],
            expires_at=timezone.now() + timedelta(hours=1),
        )
        response = bearer(issued.raw_key).get("/v1/me")
        assert response.status_code == 200
        assert response.json()["entity_uri"] == "stigmem://test/agent/fresh"

    def test_key_is_stored_only_as_a_keyed_hash(self, client):
        row = ApiKey.objects.get(pk=client.key.pk)
        assert row.key_hash == hash_key(client.raw_key)
        assert row.key_hash != client.raw_key
        assert len(row.key_hash) == 64
        # The raw key appears in no column of the row (only a short prefix is kept).
        for field in ApiKey._meta.fields:
            value = str(getattr(row, field.attname))
            assert client.raw_key not in value, field.name
        assert len(row.key_prefix) <= 12 and client.raw_key.startswith(row.key_prefix)
        # And the hash is keyed: it is not a plain SHA-256 of the key.
        import hashlib

        assert row.key_hash != hashlib.sha256(client.raw_key.encode()).hexdigest()
        # Lookup by the raw key works.
        response = client.get("/v1/me")
        assert response.status_code == 200
        assert response.json()["entity_uri"] == row.entity_uri


class TestPermissions:
    def test_read_only_key_cannot_write(self, make_client):
        reader = make_client(["read"])
        response = reader.post("/v1/facts", FACT, format="json")
        assert response.status_code == 403
        assert response.json() == {"detail": "write permission required"}
        assert Fact.objects.count() == 0
        batch = reader.post("/v1/facts/batch", {"facts": [FACT]}, format="json")
        assert batch.status_code == 403
        assert batch.json() == {"detail": "write permission required"}
        assert Fact.objects.count() == 0

    def test_write_only_key_cannot_read(self, make_client):
        writer = make_client(["write"])
        assert writer.post("/v1/facts", FACT, format="json").status_code == 201
        response = writer.get("/v1/facts")
        assert response.status_code == 403
        assert response.json() == {"detail": "read permission required"}
        assert writer.get("/v1/me").json() == {"detail": "read permission required"}

    def test_non_admin_cannot_create_keys(self, make_client):
        before = ApiKey.objects.count()
        rw = make_client(["read", "write", "federate", "audit.read", "admin:federation"])
        response = rw.post(
            "/v1/auth/keys", {"entity_uri": "stigmem://test/agent/x", "permissions": ["read"]}, format="json"
        )
        assert response.status_code == 403
        assert response.json() == {"detail": "admin permission required"}
        assert ApiKey.objects.count() == before + 1  # only rw's own key

    def test_admin_implies_the_other_permissions(self, make_client):
        admin = make_client(["admin"], entity="stigmem://test/agent/root")
        me = admin.get("/v1/me")
        assert me.status_code == 200
        assert me.json() == {
            "entity_uri": "stigmem://test/agent/root",
            "permissions": ["admin"],
            "tenant_id": "default",
        }
        created = admin.post("/v1/facts", FACT, format="json")
        assert created.status_code == 201, created.content
        listed = admin.get("/v1/facts")
        assert listed.status_code == 200
        assert [f["id"] for f in listed.json()["facts"]] == [created.json()["id"]]


# --- STIGMEM_AUTH_REQUIRED=false ----------------------------------------------------------------


def load_settings(monkeypatch, tmp_path, **env: str) -> types.ModuleType:
    """Execute settings.py as a fresh module under the given environment."""
    for name in ("STIGMEM_AUTH_REQUIRED", "STIGMEM_NODE_URL", "STIGMEM_ALLOWED_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STIGMEM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("STIGMEM_SECRET_KEY", "test-secret-for-settings-probe")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("stigmem_settings_probe", SETTINGS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestAuthOff:
    @pytest.mark.parametrize(
        "url",
        ["http://127.0.0.1:8765", "http://localhost:9000", "http://[::1]:8000", "http://127.0.0.2", "http://LOCALHOST"],
    )
    def test_allowed_on_a_loopback_node_url(self, monkeypatch, tmp_path, url):
        module = load_settings(monkeypatch, tmp_path, STIGMEM_AUTH_REQUIRED="false", STIGMEM_NODE_URL=url)
        assert module.STIGMEM_AUTH_REQUIRED is False

    @pytest.mark.parametrize(
        "url",
        [
            "https://node.example.com",
            "http://10.0.0.5:8765",
            "http://0.0.0.0:8765",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "not a url",
        ],
    )
    def test_refused_unless_the_node_url_is_loopback(self, monkeypatch, tmp_path, url):
        with pytest.raises(ImproperlyConfigured, match="STIGMEM_AUTH_REQUIRED=false"):
            load_settings(monkeypatch, tmp_path, STIGMEM_AUTH_REQUIRED="false", STIGMEM_NODE_URL=url)

    def test_auth_required_is_the_default_and_any_url_is_fine_with_it(self, monkeypatch, tmp_path):
        module = load_settings(monkeypatch, tmp_path, STIGMEM_NODE_URL="https://node.example.com")
        assert module.STIGMEM_AUTH_REQUIRED is True

    def test_a_real_process_refuses_to_start(self, tmp_path):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STIGMEM_") and k != "DATABASE_URL"}
        env.update(
            DJANGO_SETTINGS_MODULE="stigmem.settings",
            STIGMEM_DATA_DIR=str(tmp_path),
            STIGMEM_AUTH_REQUIRED="false",
            STIGMEM_NODE_URL="https://node.example.com",
        )
        code = "import django; django.setup(); print('STARTED')"
        refused = subprocess.run(
            [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode != 0
        assert "STARTED" not in refused.stdout
        assert "ImproperlyConfigured" in refused.stderr
        assert "loopback" in refused.stderr

        env["STIGMEM_NODE_URL"] = "http://127.0.0.1:8765"
        code = "import django; django.setup(); from django.conf import settings; print(settings.STIGMEM_AUTH_REQUIRED)"
        allowed = subprocess.run(
            [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
        )
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.strip() == "False"

    def test_anonymous_caller_is_anon_trusted(self, anon, settings, db):
        settings.STIGMEM_AUTH_REQUIRED = False
        me = anon.get("/v1/me")
        assert me.status_code == 200
        assert me.json() == {
            "entity_uri": "anon:trusted",
            "permissions": ["federate", "read", "write"],
            "tenant_id": "default",
        }
        created = anon.post("/v1/facts", FACT, format="json")
        assert created.status_code == 201, created.content
        assert Fact.objects.get(id=created.json()["id"]).tenant == "default"
        listed = anon.get("/v1/facts")
        assert [f["id"] for f in listed.json()["facts"]] == [created.json()["id"]]
        # anon:trusted is not an admin.
        response = anon.post(
            "/v1/auth/keys", {"entity_uri": "stigmem://test/agent/x", "permissions": ["read"]}, format="json"
        )
        assert response.status_code == 403
        assert response.json() == {"detail": "admin permission required"}
        assert ApiKey.objects.count() == 0
        assert anon.get("/.well-known/stigmem").json()["auth"] == "none"

    def test_a_bad_key_is_still_refused_with_auth_off(self, settings, db):
        settings.STIGMEM_AUTH_REQUIRED = False
        assert_401(bearer("sk_not_a_key_of_this_node_at_all_000").get("/v1/me"))


# --- /v1/auth/keys ------------------------------------------------------------------------------


def new_key_body(**extra) -> dict:
    return {"entity_uri": "stigmem://test/agent/new", "permissions": ["read", "write"], **extra}


class TestCreateKey:
    def test_generated_key_is_returned_once_and_works(self, admin_client):
        response = admin_client.post("/v1/auth/keys", new_key_body(description="for the crawler"), format="json")
        assert response.status_code == 201, response.content
        body = response.json()
        assert set(body) >= KEY_FIELDS
        assert body["entity_uri"] == "stigmem://test/agent/new"
        assert body["permissions"] == ["read", "write"]
        assert body["description"] == "for the crawler"
        assert body["tenant_id"] == "default"
        raw = body["api_key"]
        assert isinstance(raw, str) and len(raw) >= 32
        row = ApiKey.objects.get(id=body["id"])
        assert row.key_hash == hash_key(raw)
        assert row.created_by == "stigmem://test/agent/admin"
        me = bearer(raw).get("/v1/me")
        assert me.status_code == 200
        assert me.json() == {
            "entity_uri": "stigmem://test/agent/new",
            "permissions": ["read", "write"],
            "tenant_id": "default",
        }
        # Shown once: listing never returns the raw key or its hash.
        listed = bearer(raw).get("/v1/auth/keys").json()
        entry = next(k for k in listed if k["id"] == body["id"])
        assert "api_key" not in entry
        assert raw not in str(listed) and row.key_hash not in str(listed)

    def test_entity_uri_is_normalized(self, admin_client):
        response = admin_client.post(
            "/v1/auth/keys", new_key_body(entity_uri="stigmem://TEST/Agent/Big Name"), format="json"
        )
        assert response.status_code == 201
        assert response.json()["entity_uri"] == "stigmem://test/agent/big-name"

    def test_supplied_raw_key_is_not_echoed_and_works(self, admin_client):
        raw = "my-own-key-" + "k" * 21  # 32 characters
        assert len(raw) == 32
        response = admin_client.post("/v1/auth/keys", new_key_body(raw_key=raw), format="json")
        assert response.status_code == 201, response.content
        assert "api_key" not in response.json()
        assert ApiKey.objects.get(id=response.json()["id"]).key_hash == hash_key(raw)
        assert bearer(raw).get("/v1/me").json()["entity_uri"] == "stigmem://test/agent/new"

    def test_default_expiry_is_90_days(self, admin_client):
        body = admin_client.post("/v1/auth/keys", new_key_body(), format="json").json()
        created = datetime.fromisoformat(body["created_at"])
        expires = datetime.fromisoformat(body["expires_at"])
        assert created.utcoffset() == timedelta(0)
        assert abs((expires - created) - timedelta(days=90)) < timedelta(minutes=1)

    def test_max_age_setting_changes_the_default_and_zero_means_none(self, admin_client, settings):
        settings.STIGMEM_API_KEY_MAX_AGE_DAYS = 7
        body = admin_client.post("/v1/auth/keys", new_key_body(), format="json").json()
        delta = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(body["created_at"])
        assert abs(delta - timedelta(days=7)) < timedelta(minutes=1)

        settings.STIGMEM_API_KEY_MAX_AGE_DAYS = 0
        response = admin_client.post("/v1/auth/keys", new_key_body(), format="json")
        assert response.status_code == 201
        assert response.json()["expires_at"] is None
        assert ApiKey.objects.get(id=response.json()["id"]).expires_at is None

    def test_explicit_future_expiry_is_kept(self, admin_client):
        when = (timezone.now() + timedelta(days=3)).replace(microsecond=0)
        response = admin_client.post("/v1/auth/keys", new_key_body(expires_at=when.isoformat()), format="json")
        assert response.status_code == 201
        assert datetime.fromisoformat(response.json()["expires_at"]) == when

    def test_own_tenant_id_is_accepted(self, admin_client):
        response = admin_client.post("/v1/auth/keys", new_key_body(tenant_id="default"), format="json")
        assert response.status_code == 201
        assert response.json()["tenant_id"] == "default"

    @pytest.mark.parametrize(
        ("extra", "field"),
        [
            ({"raw_key": "k" * 31}, "raw_key"),
            ({"raw_key": 12345678901234567890123456789012345}, "raw_key"),
            ({"expires_at": "2001-01-01T00:00:00+00:00"}, "expires_at"),
            ({"expires_at": "next tuesday"}, "expires_at"),
            ({"expires_at": 1893456000}, "expires_at"),
            ({"permissions": []}, "permissions"),
            ({"permissions": "read"}, "permissions"),
            ({"entity_uri": ""}, "entity_uri"),
            ({"entity_uri": None}, "entity_uri"),
            ({"description": 5}, "description"),
        ],
    )
    def test_invalid_fields_are_422_and_create_nothing(self, admin_client, extra, field):
        before = ApiKey.objects.count()
        response = admin_client.post("/v1/auth/keys", new_key_body(**extra), format="json")
        assert response.status_code == 422, response.content
        detail = response.json()["detail"]
        assert isinstance(detail, list) and detail
        assert ["body", field] in [entry["loc"] for entry in detail]
        assert all({"loc", "msg", "type"} <= set(entry) for entry in detail)
        assert ApiKey.objects.count() == before

    def test_body_that_is_not_an_object_is_422(self, admin_client):
        before = ApiKey.objects.count()
        response = admin_client.post("/v1/auth/keys", ["read"], format="json")
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body"]
        assert ApiKey.objects.count() == before

    def test_unknown_permission_is_400(self, admin_client):
        before = ApiKey.objects.count()
        response = admin_client.post("/v1/auth/keys", new_key_body(permissions=["read", "superuser"]), format="json")
        assert response.status_code == 400
        assert "superuser" in response.json()["detail"]
        assert ApiKey.objects.count() == before

    def test_invalid_entity_uri_is_400(self, admin_client):
        before = ApiKey.objects.count()
        response = admin_client.post("/v1/auth/keys", new_key_body(entity_uri="stigmem://a/ /x"), format="json")
        assert response.status_code == 400
        assert response.json()["detail"]["code"] == "invalid_entity_uri"
        assert ApiKey.objects.count() == before

    def test_duplicate_raw_key_is_409(self, admin_client):
        raw = "duplicate-key-" + "d" * 30
        assert admin_client.post("/v1/auth/keys", new_key_body(raw_key=raw), format="json").status_code == 201
        before = ApiKey.objects.count()
        again = admin_client.post(
            "/v1/auth/keys", new_key_body(raw_key=raw, entity_uri="stigmem://test/agent/other"), format="json"
        )
        assert again.status_code == 409
        assert isinstance(again.json()["detail"], str)
        assert ApiKey.objects.count() == before
        # The original holder is unchanged.
        assert bearer(raw).get("/v1/me").json()["entity_uri"] == "stigmem://test/agent/new"

    def test_duplicate_of_another_tenants_key_is_409(self, admin_client, make_client):
        other = make_client(["read"], tenant="other")
        before = ApiKey.objects.count()
        response = admin_client.post("/v1/auth/keys", new_key_body(raw_key=other.raw_key), format="json")
        assert response.status_code == 409
        assert ApiKey.objects.count() == before
        assert other.get("/v1/me").json()["tenant_id"] == "other"

    def test_another_tenant_is_403(self, admin_client):
        before = ApiKey.objects.count()
        response = admin_client.post("/v1/auth/keys", new_key_body(tenant_id="other"), format="json")
        assert response.status_code == 403
        assert isinstance(response.json()["detail"], str)
        assert ApiKey.objects.count() == before
        assert not ApiKey.objects.filter(tenant="other").exists()


class TestListAndRevokeKeys:
    def test_everyone_lists_only_their_identitys_active_keys(self, make_client):
        admin = make_client(["admin"], entity="stigmem://test/agent/root")
        alice = make_client(["read"], entity="stigmem://test/agent/alice")
        alice2 = make_client(["read", "write"], entity="stigmem://test/agent/alice")
        alice_revoked = make_client(["read"], entity="stigmem://test/agent/alice")
        ApiKey.objects.filter(pk=alice_revoked.key.pk).update(revoked_at=timezone.now())
        bob = make_client(["read"], entity="stigmem://test/agent/bob")
        foreign = make_client(["admin"], tenant="other", entity="stigmem://test/agent/alice")

        def ids(client) -> set[str]:
            response = client.get("/v1/auth/keys")
            assert response.status_code == 200
            assert isinstance(response.json(), list)  # a bare array, like the reference
            return {k["id"] for k in response.json()}

        assert ids(admin) == {str(admin.key.id)}
        assert ids(alice) == {str(alice.key.id), str(alice2.key.id)}
        assert ids(bob) == {str(bob.key.id)}
        assert ids(foreign) == {str(foreign.key.id)}

        entry = alice.get("/v1/auth/keys").json()[0]
        assert set(entry) >= KEY_FIELDS
        assert entry["tenant_id"] == "default"
        assert entry["oidc_sub"] is None

    def test_delete_revokes_on_the_next_request(self, admin_client, make_client):
        victim = make_client(["read"], entity="stigmem://test/agent/victim")
        assert victim.get("/v1/me").status_code == 200
        response = admin_client.delete(f"/v1/auth/keys/{victim.key.id}")
        assert response.status_code == 204
        assert response.content == b""
        assert_401(victim.get("/v1/me"))
        assert ApiKey.objects.get(pk=victim.key.pk).revoked_at is not None
        # Revoking again is harmless.
        assert admin_client.delete(f"/v1/auth/keys/{victim.key.id}").status_code == 204

    def test_a_key_can_revoke_itself(self, make_client):
        me = make_client(["read"])
        assert me.delete(f"/v1/auth/keys/{me.key.id}").status_code == 204
        assert_401(me.get("/v1/me"))

    def test_another_tenants_key_is_404(self, admin_client, make_client):
        foreign = make_client(["read"], tenant="other")
        response = admin_client.delete(f"/v1/auth/keys/{foreign.key.id}")
        assert response.status_code == 404
        assert response.json()["detail"].endswith("not found")
        assert ApiKey.objects.get(pk=foreign.key.pk).revoked_at is None
        assert foreign.get("/v1/me").status_code == 200

    def test_non_admin_cannot_revoke_someone_elses_key(self, make_client):
        alice = make_client(["read", "write"], entity="stigmem://test/agent/alice")
        bob = make_client(["read"], entity="stigmem://test/agent/bob")
        response = alice.delete(f"/v1/auth/keys/{bob.key.id}")
        assert response.status_code == 404
        assert bob.get("/v1/me").status_code == 200

    @pytest.mark.parametrize("key_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
    def test_unknown_id_is_404(self, admin_client, key_id):
        response = admin_client.delete(f"/v1/auth/keys/{key_id}")
        assert response.status_code == 404
        assert response.json() == {"detail": "API key not found"}
