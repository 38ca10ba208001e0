"""TTP rules in the operator console: the rule list with state, validity and counters, state changes
(all or nothing), the directory sync, the state history and the tag list."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from ttprules import store
from ttprules.models import Rule, RuleState, RuleStateChange, RuleStats, Tag
from ttprules.store import set_state, sync_directory

from .engine_helpers import DNS_ANYTHING, HOST, REVERSE_SHELL, SHELL, observe, run_engine, write_rule
from .store_helpers import snapshot, state_events

RULES = "admin:ttprules_rule_changelist"
SYNC = "admin:ttprules_rule_sync"
HISTORY = "admin:ttprules_rulestatechange_changelist"
TAGS = "admin:ttprules_tag_changelist"
OTHER_HOST = "stigmem://acme/host/db-2"
BROKEN = "rule_id: BAD\nrule_version: 0\nname: broken\nsurprise: yes\n"


@pytest.fixture
def rules_dir(tmp_path, db, settings) -> Path:
    directory = tmp_path / "rules"
    write_rule(directory, REVERSE_SHELL, "R1")
    write_rule(directory, DNS_ANYTHING, "D1")
    (directory / "BAD.yaml").write_text(BROKEN)
    settings.STIGMEM_TTP_RULES_DIR = directory
    sync_directory(directory)
    return directory


def rule(rule_id: str) -> Rule:
    return Rule.objects.get(rule_id=rule_id)


def rule_url(rule_id: str, page: str = "change") -> str:
    return reverse(f"admin:ttprules_rule_{page}", args=[rule(rule_id).pk])


@pytest.fixture
def tagged(client, make_client, rules_dir) -> dict[str, list[Tag]]:
    """R1 tags two commands on two hosts, D1 one DNS query; D1 also tags a query of tenant acme."""
    observe(client, SHELL)
    observe(client, "sh -c 'cat < /dev/tcp/10.1.1.1/80'", entity=OTHER_HOST)
    observe(client, "evil.example.org", relation="observed:dns_query")
    observe(make_client(tenant="acme"), "acme.example.org", relation="observed:dns_query")
    observe(client, "ls -la")  # matches nothing
    run_engine()
    return {rule_id: list(Tag.objects.filter(rule_id=rule_id)) for rule_id in ("R1", "D1")}


def listed(response) -> list:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def shown_ids(response) -> list[str]:
    return [row.rule_id for row in listed(response)]


def notes(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def action(name: str, *rule_ids: str, **data: str) -> dict:
    return {"action": name, "_selected_action": [str(rule(r).pk) for r in rule_ids], **data}


def later(**delta: float) -> str:
    return (timezone.now() + timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%S")


def state_of(rule_id: str) -> tuple:
    row = RuleState.objects.filter(rule_id=rule_id).first()
    return (row.state, row.confidence_max) if row is not None else ("enabled", None)


# --- every page ------------------------------------------------------------------------------------


def test_every_page_renders(browser, tagged):
    set_state("R1", "disabled", reason="noisy", set_by="cli:alice")
    change = RuleStateChange.objects.get()
    tag = Tag.objects.filter(rule_id="R1").first()
    pages = [
        reverse(RULES),
        reverse(RULES) + "?valid__exact=0",
        reverse(RULES) + "?state=disabled",
        reverse(RULES) + "?o=6",  # sorted by tags
        reverse(RULES) + "?_facets=True&state=clipped",
        rule_url("R1"),
        rule_url("D1"),
        rule_url("BAD"),
        reverse(HISTORY),
        reverse(HISTORY) + "?cause__exact=operator&to_state__exact=disabled",
        reverse(HISTORY) + "?_facets=True",
        reverse("admin:ttprules_rulestatechange_change", args=[change.pk]),
        reverse(TAGS),
        reverse(TAGS) + "?technique=T1059.004&rule_id=R1&tenant=default",
        reverse("admin:ttprules_tag_change", args=[tag.pk]),
    ]
    for page in pages:
        assert browser.get(page).status_code == 200, page
    intermediate = browser.post(reverse(RULES), action("set_state", "R1", "D1"))
    assert intermediate.status_code == 200
    assert intermediate.templates[0].name == "admin/ttprules/rule/set_state.html"


# --- the rule list ---------------------------------------------------------------------------------


def test_the_rule_list_shows_validity_state_and_counts(browser, tagged):
    until = timezone.now() + timedelta(hours=2)
    set_state("R1", "clipped", confidence_max=0.5, expires_at=until, set_by="cli:alice")
    set_state("D1", "shadow", set_by="cli:alice")
    RuleStats.objects.filter(rule_id="D1").update(errors=3)

    response = browser.get(reverse(RULES))
    rows = {row.rule_id: row for row in listed(response)}
    assert set(rows) == {"BAD", "D1", "R1"}
    assert (rows["R1"].state_value, rows["R1"].state_confidence_max) == ("clipped", 0.5)
    assert rows["R1"].state_expires_at == until
    assert (rows["D1"].state_value, rows["BAD"].state_value) == ("shadow", "enabled")
    assert (rows["R1"].n_tags, rows["R1"].n_matched, rows["R1"].n_shadow_tags, rows["R1"].n_errors) == (2, 2, 0, 0)
    assert (rows["D1"].n_tags, rows["D1"].n_matched, rows["D1"].n_errors) == (2, 2, 3)
    assert (rows["BAD"].n_tags, rows["BAD"].n_matched) == (0, 0)
    assert Tag.objects.count() == 4

    html = response.content.decode()
    assert "clipped ≤ 0.5 until " in html
    assert ">shadow<" in html
    assert 'alt="False"' in html and 'alt="True"' in html  # validity as the admin's boolean icons
    assert f'href="{reverse(TAGS)}?rule_id=R1">2</a>' in html
    for header in ("tags", "matched", "shadow tags", "errors", "state", "valid"):
        assert header in html.lower(), header


def test_shadow_tags_are_counted_in_the_list(browser, client, rules_dir):
    set_state("R1", "shadow", set_by="cli:alice")
    observe(client, SHELL)
    run_engine()
    (row,) = [r for r in listed(browser.get(reverse(RULES))) if r.rule_id == "R1"]
    assert (row.state_value, row.n_tags, row.n_shadow_tags, row.n_matched) == ("shadow", 0, 1, 1)


def test_the_list_costs_the_same_queries_for_few_or_many_rules(browser, tagged, rules_dir):
    def list_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert browser.get(reverse(RULES)).status_code == 200
        return len(queries)

    few = list_queries()
    for number in range(2, 12):
        write_rule(rules_dir, REVERSE_SHELL, f"R{number}")
    sync_directory(rules_dir)
    for number in range(2, 12, 2):
        set_state(f"R{number}", "disabled", set_by="cli:alice")
    RuleStats.objects.bulk_create([RuleStats(rule_id=f"R{n}", tags=n) for n in range(2, 12)])
    assert Rule.objects.count() == 13
    assert list_queries() == few


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"valid__exact": "0"}, ["BAD"]),
        ({"valid__exact": "1"}, ["D1", "R1"]),
        ({"state": "enabled"}, ["BAD", "R1"]),
        ({"state": "disabled"}, ["D1"]),
        ({"state": "clipped"}, []),
        ({"q": "reverse_shell"}, ["R1"]),
        ({"q": "bad"}, ["BAD"]),
        ({"q": "D1"}, ["D1"]),
    ],
)
def test_the_rule_list_filters_and_search(browser, rules_dir, params, expected):
    set_state("D1", "disabled", set_by="cli:alice")
    set_state("R1", "shadow", set_by="cli:alice")
    set_state("R1", "enabled", set_by="cli:alice")  # a stored row saying enabled is enabled
    assert shown_ids(browser.get(reverse(RULES), params)) == expected


def test_a_state_kept_for_a_rule_whose_file_is_gone_is_pointed_out(browser, rules_dir):
    set_state("D1", "disabled", set_by="cli:alice")
    (rules_dir / "D1.yaml").unlink()
    sync_directory(rules_dir)
    response = browser.get(reverse(RULES))
    assert shown_ids(response) == ["BAD", "R1"]
    assert response.context["orphan_states"] == [("D1", "disabled")]
    assert "D1 (disabled)" in response.content.decode()


# --- the rule's page -------------------------------------------------------------------------------


def test_the_rule_page_shows_definition_source_state_history_and_counters(browser, tagged):
    set_state("R1", "disabled", reason="noisy on build hosts", set_by="cli:alice")
    set_state("R1", "clipped", confidence_max=0.4, reason="tuning", set_by="cli:bob")
    RuleStats.objects.filter(rule_id="R1").update(dropped=5, errors=1, last_error="RuntimeError: boom")

    html = browser.get(rule_url("R1")).content.decode()
    source = rule("R1").source
    assert "<pre" in html and "/dev/tcp/" in html and "rule_version: 1" in source
    assert "T1059.004" in html and "Unix Shell" in html and "TA0002" in html and "Execution" in html
    assert "observed:command" in html
    assert '<span id="rule-state">clipped ≤ 0.4</span>' in html and "set by cli:bob" in html
    history = html[html.index('id="rule-history"') :]
    assert history.index("tuning") < history.index("noisy on build hosts")  # newest first
    stats = html[html.index('id="rule-stats"') :]
    for text in ("tags written</td><td>2", "facts matched</td><td>2", "dropped", ">5<", "RuntimeError: boom"):
        assert text in stats, text
    assert "Set state…" in html and "Enable (clear state)" in html


def test_the_page_of_an_invalid_rule_lists_its_errors(browser, rules_dir):
    response = browser.get(rule_url("BAD"))
    html = response.content.decode()
    errors = rule("BAD").errors
    assert errors
    for error in errors:
        assert f"<li>{error}</li>" in html.replace("&#x27;", "'").replace("&quot;", '"'), error
    assert "surprise" in html
    assert "nothing counted yet" in html and "no state changes" in html
    assert "Enable (clear state)" not in html  # it is enabled


def test_rules_are_read_only(browser, rules_dir):
    before = snapshot()
    r1 = rule("R1")
    assert browser.get(reverse("admin:ttprules_rule_add")).status_code == 403
    assert browser.post(reverse("admin:ttprules_rule_add"), {"rule_id": "X"}).status_code == 403
    assert browser.post(rule_url("R1"), {"name": "renamed", "valid": "on"}).status_code == 403
    assert browser.get(rule_url("R1", "delete")).status_code == 403
    assert browser.post(rule_url("R1", "delete"), {"post": "yes"}).status_code == 403
    bulk = browser.post(reverse(RULES), action("delete_selected", "R1", post="yes"))
    assert bulk.status_code in (200, 302)
    assert snapshot() == before
    assert rule("R1").name == r1.name
    listing = browser.get(reverse(RULES)).content.decode()
    assert "delete_selected" not in listing
    assert reverse("admin:ttprules_rule_add") not in listing


# --- state actions ---------------------------------------------------------------------------------


def test_set_state_asks_on_an_intermediate_page_and_changes_nothing_yet(browser, rules_dir):
    before = snapshot()
    # As the list's form posts it (with "index"), which the intermediate page's form does not.
    response = browser.post(reverse(RULES), action("set_state", "R1", "D1", index="0"))
    assert response.status_code == 200
    assert [r.rule_id for r in response.context["rules"]] == ["D1", "R1"]
    html = response.content.decode()
    for text in ('name="state"', 'name="confidence_max"', 'name="expires_at"', 'name="reason"', 'value="yes"'):
        assert text in html, text
    assert snapshot() == before


def test_set_state_sets_every_selected_rule(browser, rules_dir):
    events_before = len(state_events())
    data = action(
        "set_state", "R1", "D1", post="yes", state="clipped", confidence_max="0.4", expires_at=later(hours=3),
        reason="too loud",
    )  # fmt: skip
    response = browser.post(reverse(RULES), data)
    assert response.status_code == 302, response.context and response.context["form"].errors
    assert state_of("R1") == state_of("D1") == ("clipped", 0.4)
    rows = list(RuleState.objects.order_by("rule_id"))
    assert all(row.set_by == "admin:root" and row.reason == "too loud" for row in rows)
    assert all(row.expires_at > timezone.now() + timedelta(hours=2) for row in rows)
    changes = list(RuleStateChange.objects.order_by("rule_id").values_list("rule_id", "to_state", "set_by", "cause"))
    assert changes == [("D1", "clipped", "admin:root", "operator"), ("R1", "clipped", "admin:root", "operator")]
    assert len(state_events()) == events_before + 2
    assert any("Set 2 rule(s) to clipped ≤ 0.4 until" in note for note in notes(response))


def test_expires_at_as_a_browser_sends_it_or_with_an_offset(browser, rules_dir):
    moment = (timezone.now() + timedelta(days=2)).replace(second=0, microsecond=0)
    minutes = moment.strftime("%Y-%m-%dT%H:%M")  # a datetime-local input without seconds, in UTC
    response = browser.post(reverse(RULES), action("set_state", "R1", post="yes", state="shadow", expires_at=minutes))
    assert response.status_code == 302
    assert RuleState.objects.get(rule_id="R1").expires_at == moment
    offset = (moment + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    response = browser.post(reverse(RULES), action("set_state", "D1", post="yes", state="shadow", expires_at=offset))
    assert response.status_code == 302
    assert RuleState.objects.get(rule_id="D1").expires_at == moment


def test_set_state_may_disable_an_invalid_rule(browser, rules_dir):
    response = browser.post(reverse(RULES), action("set_state", "BAD", post="yes", state="disabled", reason=""))
    assert response.status_code == 302
    assert state_of("BAD") == ("disabled", None)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"state": "clipped"}, "confidence_max", "required for the clipped state"),
        ({"state": "clipped", "confidence_max": "1.5"}, "confidence_max", "at most 1"),
        ({"state": "clipped", "confidence_max": "0"}, "confidence_max", "greater than 0"),
        ({"state": "clipped", "confidence_max": "lots"}, "confidence_max", "Enter a number"),
        ({"state": "disabled", "confidence_max": "0.5"}, "confidence_max", "clipped state only"),
        ({"state": "disabled", "expires_at": "2001-01-01T00:00:00"}, "expires_at", "in the future"),
        ({"state": "enabled", "expires_at": None}, "expires_at", "does not apply to enabled"),
        ({"state": "disabled", "expires_at": "next tuesday"}, "expires_at", "valid date/time"),
        ({"state": "paused"}, "state", "Select a valid choice"),
        ({"state": "shadow", "reason": "x" * (store.MAX_REASON_LENGTH + 1)}, "reason", "at most"),
    ],
)
def test_invalid_input_shows_the_form_again_and_changes_nothing(browser, rules_dir, fields, field, message):
    set_state("D1", "shadow", set_by="cli:alice")
    if fields.get("expires_at", "") is None:
        fields = {**fields, "expires_at": later(hours=1)}
    before = snapshot()
    response = browser.post(reverse(RULES), action("set_state", "R1", "D1", "BAD", post="yes", **fields))
    assert response.status_code == 200
    form = response.context["form"]
    assert field in form.errors, form.errors
    assert message in " ".join(form.errors[field])
    html = response.content.decode()
    assert "Nothing was changed" in html and message.split()[0] in html
    # The selection is carried over for the next try.
    assert html.count('name="_selected_action"') == 3
    assert snapshot() == before
    assert state_of("R1") == ("enabled", None) and state_of("D1") == ("shadow", None)


def test_a_rule_gone_meanwhile_rolls_back_the_ones_already_set(browser, rules_dir, monkeypatch):
    real = store.set_state
    calls: list[str] = []

    def set_state_while_d1_vanishes(rule_id: str, state: str, **kwargs):
        calls.append(rule_id)
        if rule_id == "R1":  # the second one, after D1 was set
            raise store.RuleNotFound(rule_id)
        return real(rule_id, state, **kwargs)

    monkeypatch.setattr(store, "set_state", set_state_while_d1_vanishes)
    before = snapshot()
    response = browser.post(reverse(RULES), action("set_state", "R1", "D1", post="yes", state="disabled"))
    assert calls == ["D1", "R1"]
    assert response.status_code == 200
    assert "R1 is no longer defined" in " ".join(response.context["form"].non_field_errors())
    assert snapshot() == before


def test_enable_clears_states_and_skips_rules_already_enabled(browser, rules_dir):
    set_state("R1", "disabled", set_by="cli:alice")
    set_state("D1", "clipped", confidence_max=0.5, set_by="cli:alice")
    events_before = len(state_events())
    response = browser.post(reverse(RULES), action("enable", "R1", "D1", "BAD"))
    assert response.status_code == 302
    assert state_of("R1") == state_of("D1") == ("enabled", None)
    latest = RuleStateChange.objects.filter(set_by="admin:root").order_by("rule_id")
    assert list(latest.values_list("rule_id", "from_state", "to_state")) == [
        ("D1", "clipped", "enabled"),
        ("R1", "disabled", "enabled"),
    ]
    assert not RuleStateChange.objects.filter(rule_id="BAD").exists()
    assert len(state_events()) == events_before + 2
    assert notes(response) == ["Enabled 2 rule(s): D1, R1.", "1 rule(s) were enabled already: unchanged."]


def test_the_buttons_on_a_rule_page_come_back_to_it(browser, rules_dir):
    page = rule_url("R1")
    form = browser.post(reverse(RULES), action("set_state", "R1", _next=page))
    assert f'name="_next" value="{page}"' in form.content.decode()
    done = browser.post(reverse(RULES), action("set_state", "R1", _next=page, post="yes", state="disabled"))
    assert done.status_code == 302 and done["Location"] == page
    enabled = browser.post(reverse(RULES), action("enable", "R1", _next=page))
    assert enabled.status_code == 302 and enabled["Location"] == page
    # Never somewhere else.
    away = browser.post(reverse(RULES), action("enable", "R1", _next="https://evil.example.org/"))
    assert away.status_code == 302 and away["Location"] == reverse(RULES)


# --- sync ------------------------------------------------------------------------------------------


def test_sync_now_loads_the_directory_and_reports(browser, rules_dir):
    write_rule(rules_dir, REVERSE_SHELL, "R2")
    write_rule(rules_dir, REVERSE_SHELL, "R1", version=2)
    (rules_dir / "D1.yaml").unlink()
    response = browser.post(reverse(SYNC))
    assert response.status_code == 302 and response["Location"] == reverse(RULES)
    assert sorted(Rule.objects.values_list("rule_id", flat=True)) == ["BAD", "R1", "R2"]
    assert rule("R1").rule_version == 2
    messages = notes(response)
    assert messages[0].startswith(f"Synced {rules_dir}: created=1 updated=1 unchanged=1 removed=1 invalid=1")
    assert "created: R2" in messages and "updated: R1" in messages and "removed: D1" in messages
    assert any(m.startswith("BAD.yaml: line ") for m in messages)


def test_sync_now_with_the_directory_missing_keeps_the_rules(browser, rules_dir, settings):
    settings.STIGMEM_TTP_RULES_DIR = rules_dir.parent / "unmounted"
    response = browser.post(reverse(SYNC))
    assert response.status_code == 302
    assert Rule.objects.count() == 3
    (message,) = notes(response)
    assert message.startswith("Sync failed: rules directory") and "kept" in message


def test_sync_needs_a_post(browser, rules_dir):
    assert browser.get(reverse(SYNC)).status_code == 405
    assert 'id="sync-form"' in browser.get(reverse(RULES)).content.decode()


# --- the history -----------------------------------------------------------------------------------


def test_the_history_list_filters_and_searches(browser, rules_dir):
    set_state("R1", "disabled", set_by="cli:alice", expires_at=timezone.now() + timedelta(hours=1))
    set_state("D1", "shadow", set_by="cli:alice")
    RuleState.objects.filter(rule_id="R1").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert store.expire_states() == 1

    def shown(params: dict) -> list[tuple]:
        return sorted((row.rule_id, row.to_state, row.cause) for row in listed(browser.get(reverse(HISTORY), params)))

    everything = shown({})
    assert everything == [("D1", "shadow", "operator"), ("R1", "disabled", "operator"), ("R1", "enabled", "expiry")]
    assert shown({"cause__exact": "expiry"}) == [("R1", "enabled", "expiry")]
    assert shown({"to_state__exact": "shadow"}) == [("D1", "shadow", "operator")]
    assert shown({"q": "R1"}) == [("R1", "disabled", "operator"), ("R1", "enabled", "expiry")]
    assert shown({"rule_id__exact": "D1"}) == [("D1", "shadow", "operator")]  # linked from the rule's page
    html = browser.get(reverse(HISTORY)).content.decode()
    assert f'href="{rule_url("R1")}"' in html


def test_the_history_is_read_only(browser, rules_dir):
    set_state("R1", "disabled", set_by="cli:alice")
    change = RuleStateChange.objects.get()
    url = reverse("admin:ttprules_rulestatechange_change", args=[change.pk])
    assert browser.get(reverse("admin:ttprules_rulestatechange_add")).status_code == 403
    assert browser.post(url, {"to_state": "enabled"}).status_code == 403
    assert browser.post(reverse("admin:ttprules_rulestatechange_delete", args=[change.pk])).status_code == 403
    assert RuleStateChange.objects.get().to_state == "disabled"


# --- tags ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"R1": 2, "D1": 2}),
        ({"technique": "T1059"}, {"R1": 2}),
        ({"technique": "T1059.004"}, {"R1": 2}),
        ({"technique": "T1071.004"}, {"D1": 2}),
        ({"technique": "T1003"}, {}),
        ({"rule_id": "D1"}, {"D1": 2}),
        ({"rule_id": "GONE"}, {}),
        ({"tenant": "acme"}, {"D1": 1}),
        ({"tenant": "default", "rule_id": "D1"}, {"D1": 1}),
        ({"entity": OTHER_HOST}, {"R1": 1}),
        ({"q": "db-2"}, {"R1": 1}),
        ({"q": "acme/host"}, {"R1": 2, "D1": 2}),
    ],
)
def test_the_tag_list_filters(browser, tagged, params, expected):
    rows = listed(browser.get(reverse(TAGS), params))
    counts: dict[str, int] = {}
    for tag in rows:
        counts[tag.rule_id] = counts.get(tag.rule_id, 0) + 1
    assert counts == expected


def test_the_tag_list_offers_techniques_and_rules_from_the_rules_table(browser, tagged):
    html = browser.get(reverse(TAGS)).content.decode()
    for text in ("?technique=T1059.004", "T1059.004 Unix Shell", "?technique=T1071", "?rule_id=R1", "?rule_id=BAD"):
        assert text in html, text
    # A removed rule's id typed in the URL is still listed as the current choice.
    assert "?rule_id=GONE" in browser.get(reverse(TAGS), {"rule_id": "GONE"}).content.decode().replace("amp;", "")


def test_the_tag_list_never_reads_the_tagged_facts_and_shows_no_full_count(browser, tagged):
    with CaptureQueriesContext(connection) as queries:
        response = browser.get(reverse(TAGS))
    rows = listed(response)
    assert len(rows) == 4
    assert not [q["sql"] for q in queries if "stigmem_fact" in q["sql"]]
    assert response.context["cl"].show_full_result_count is False
    html = response.content.decode()
    assert HOST in html and "T1059.004" in html and "TA0002" in html


def test_a_tag_page_links_its_fact_rule_and_entity(browser, tagged):
    tag = tagged["R1"][0]
    html = browser.get(reverse("admin:ttprules_tag_change", args=[tag.pk])).content.decode()
    assert reverse("admin:stigmem_fact_change", args=[tag.fact_id]) in html
    assert reverse("admin:stigmem_fact_change", args=[tag.tag_fact_id]) in html
    assert rule_url("R1") in html
    assert "Command and Scripting Interpreter" in html and "Unix Shell" in html
    assert 'id="tag-evidence"' in html and "/dev/tcp/" in html


def test_tags_are_read_only(browser, tagged):
    tag = tagged["R1"][0]
    url = reverse("admin:ttprules_tag_change", args=[tag.pk])
    assert browser.get(reverse("admin:ttprules_tag_add")).status_code == 403
    assert browser.post(url, {"confidence": "0.1"}).status_code == 403
    assert browser.post(reverse("admin:ttprules_tag_delete", args=[tag.pk]), {"post": "yes"}).status_code == 403
    browser.post(reverse(TAGS), {"action": "delete_selected", "_selected_action": [str(tag.pk)], "post": "yes"})
    assert Tag.objects.count() == 4
    assert Tag.objects.get(pk=tag.pk).confidence == tag.confidence


# --- who may use these pages -----------------------------------------------------------------------


def _logged_in(name: str, *, is_staff: bool, permissions: tuple[str, ...] = ()) -> Client:
    user = get_user_model().objects.create_user(name, password="another-long-password", is_staff=is_staff)
    user.user_permissions.add(*Permission.objects.filter(codename__in=permissions))
    client = Client()
    client.force_login(user)
    return client


def test_non_staff_users_are_refused(tagged):
    pages = [
        reverse(RULES),
        rule_url("R1"),
        reverse(HISTORY),
        reverse(TAGS),
        reverse("admin:ttprules_tag_change", args=[Tag.objects.first().pk]),
    ]
    before = snapshot()
    for client in (Client(), _logged_in("member", is_staff=False)):
        for page in pages:
            response = client.get(page)
            assert response.status_code == 302, page
            assert "/admin/login/" in response["Location"]
        response = client.post(reverse(RULES), action("set_state", "R1", post="yes", state="disabled"))
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
        response = client.post(reverse(SYNC))
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    # Staff without permissions on these models.
    staff = _logged_in("staff", is_staff=True)
    for page in pages:
        assert staff.get(page).status_code == 403, page
    assert staff.post(reverse(SYNC)).status_code == 403
    assert staff.post(reverse(RULES), action("enable", "R1")).status_code == 403
    assert snapshot() == before


def test_staff_who_may_only_view_cannot_change_states_or_sync(rules_dir):
    set_state("D1", "disabled", set_by="cli:alice")
    viewer = _logged_in("viewer", is_staff=True, permissions=("view_rule",))
    listing = viewer.get(reverse(RULES))
    assert listing.status_code == 200
    html = listing.content.decode()
    assert 'value="set_state"' not in html and 'id="sync-form"' not in html
    assert "Set state…" not in viewer.get(rule_url("D1")).content.decode()
    before = snapshot()
    viewer.post(reverse(RULES), action("set_state", "R1", post="yes", state="disabled"))
    viewer.post(reverse(RULES), action("enable", "D1"))
    assert viewer.post(reverse(SYNC)).status_code == 403
    assert snapshot() == before


def test_state_forms_need_the_csrf_token(rules_dir):
    client = Client(enforce_csrf_checks=True)
    client.force_login(get_user_model().objects.create_superuser("root", email="", password="a-long-test-password"))
    before = snapshot()
    assert client.post(reverse(RULES), action("set_state", "R1", post="yes", state="disabled")).status_code == 403
    assert client.post(reverse(SYNC)).status_code == 403
    assert snapshot() == before
