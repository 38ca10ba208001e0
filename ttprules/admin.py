"""TTP rules in the operator console: rules with validity, state and counters; state changes; the
state history; the tags the engine wrote.

Rules come from the rules directory (``STIGMEM_TTP_RULES_DIR``), so their pages are read-only: no
add, edit or delete here. What an operator changes is a rule's state, through the store like the API
and ``manage.py ttprules state`` do (history row, audit row, ``ttp.rule.state.<rule_id>`` event;
actor ``admin:<username>``). "Set state…" asks for the state on an intermediate page and changes
every selected rule or, when anything is wrong, none of them. "Sync rules directory now" runs the
sync the scheduled task runs every minute and reports what it did.

The engine's per-rule counters (``RuleStats``) are columns of the rule list and a section of each
rule's page; they get no list of their own. The list reads states and counters in subqueries of its
one query, so it costs the same for 10 rules or 1,000. Tags can be many: the tag list shows no full
count, never joins the tagged fact (whose value can be 64 KiB), and takes the choices of its
technique and rule filters from the rules table instead of a DISTINCT over the tags.

Acting needs Django's change permission on rules (superusers have it), although the edit form itself
is closed to everyone; viewing needs the view permission.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import BigIntegerField, Model, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme

from stigmem.admin.core import ReadOnlyAdmin
from ttprules import attack, store
from ttprules.models import Rule, RuleState, RuleStateChange, RuleStats, Tag

State = RuleState.State
HISTORY_SHOWN = 50  # state changes on a rule's page; the history list has them all
INVALID_FILES_SHOWN = 10  # invalid files named after a sync; the rule list filtered by validity has them all


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _moment(value: datetime | None) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z") if value is not None else "-"


def describe_state(state: str, confidence_max: float | None, expires_at: datetime | None) -> str:
    """``disabled``, ``clipped ≤ 0.5``, ``shadow until 2030-01-01 00:00:00 UTC``."""
    text = str(state)
    if confidence_max is not None:
        text += f" ≤ {confidence_max:g}"
    if expires_at is not None:
        text += f" until {_moment(expires_at)}"
    return text


def _technique_name(tid: str | None) -> str:
    technique = attack.catalogue().technique(tid) if tid else None
    return technique.name if technique is not None else ""


def _tactic_name(taid: str) -> str:
    tactic = attack.catalogue().tactic(taid)
    return tactic.name if tactic is not None else ""


def _per_rule(model: type[Model], column: str) -> Subquery:
    """One column of the row of ``model`` keyed by the outer rule's id (both tables: unique rule_id)."""
    return Subquery(model.objects.filter(rule_id=OuterRef("rule_id")).values(column)[:1])


def _count(column: str) -> Coalesce:
    return Coalesce(_per_rule(RuleStats, column), Value(0), output_field=BigIntegerField())


def with_state_and_counts(queryset: QuerySet[Rule]) -> QuerySet[Rule]:
    """Rules annotated with their state (``enabled`` without a row) and the engine's counters."""
    return queryset.annotate(
        state_value=Coalesce(_per_rule(RuleState, "state"), Value(State.ENABLED.value)),
        state_confidence_max=_per_rule(RuleState, "confidence_max"),
        state_expires_at=_per_rule(RuleState, "expires_at"),
        n_tags=_count("tags"),
        n_matched=_count("matched"),
        n_shadow_tags=_count("shadow_tags"),
        n_errors=_count("errors"),
    )


def _table(headers: Iterable[str], rows: Iterable[Iterable[Any]], **attrs: str) -> str:
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
    )
    extra = format_html_join("", ' {}="{}"', attrs.items())
    return format_html("<table{}><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", extra, head, body)


def _lines(items: Iterable[str], empty: str = "none") -> str:
    items = list(items)
    if not items:
        return empty
    return format_html("<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((item,) for item in items)))


# --- the state form --------------------------------------------------------------------------------


class StateForm(forms.Form):
    """The state for the selected rules; checked by ``store.validate_state``, the store's own rules."""

    state = forms.ChoiceField(
        choices=State.choices,
        initial=State.DISABLED,
        widget=forms.RadioSelect,
        help_text=(
            "enabled: the default, clears any state; disabled: not evaluated; clipped: fires with "
            "confidence at most “confidence max”; shadow: evaluated and counted, emits nothing."
        ),
    )
    confidence_max = forms.FloatField(
        label="Confidence max",
        required=False,
        help_text="Clipped only: the most confidence a tag of these rules gets (greater than 0, at most 1).",
    )
    expires_at = forms.DateTimeField(
        label="Expires at",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"}, format="%Y-%m-%dT%H:%M:%S"),
        help_text=(
            f"Optional, in the future, in {settings.TIME_ZONE}: the rules then revert to enabled (within a minute). "
            "Not for enabled."
        ),
    )
    reason = forms.CharField(
        required=False,
        max_length=store.MAX_REASON_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Why; kept in the history and the audit log.",
    )

    def __init__(self, *args: Any, actor: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.actor = actor

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        try:
            store.validate_state(
                data.get("state"),
                data.get("confidence_max"),
                data.get("expires_at"),
                data.get("reason", ""),
                self.actor,
            )
        except store.StateInvalid as exc:
            self.add_state_errors(exc, skip=set(self.errors))
        return data

    def add_state_errors(self, exc: store.StateInvalid, skip: Collection[str] = ()) -> None:
        # A field that failed its own parsing keeps that message; the store's would only repeat it.
        for name, message in exc.errors.items():
            if name not in skip:
                self.add_error(name if name in self.fields else None, message)


# --- rules -----------------------------------------------------------------------------------------


class StateFilter(admin.SimpleListFilter):
    """By state; ``enabled`` includes rules without a stored state."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return list(State.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Rule]) -> QuerySet[Rule]:
        value = self.value()
        if value is None:
            return queryset
        if value == State.ENABLED:
            return queryset.exclude(rule_id__in=RuleState.objects.exclude(state=State.ENABLED).values("rule_id"))
        return queryset.filter(rule_id__in=RuleState.objects.filter(state=value).values("rule_id"))


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    list_display = (
        "rule_id",
        "name",
        "rule_version",
        "valid",
        "state",
        "tags_count",
        "matched_count",
        "shadow_tags_count",
        "errors_count",
    )
    list_filter = ("valid", StateFilter)
    search_fields = ("rule_id", "name")
    ordering = ("rule_id",)
    fieldsets = (
        (None, {"fields": ("rule_id", "name", "rule_version", "valid", "file_name", "loaded_at", "updated_at")}),
        ("Problems", {"fields": ("errors_shown", "warnings_shown")}),
        ("State", {"fields": ("state_shown", "history_shown")}),
        ("Counters", {"fields": ("stats_shown",)}),
        ("Definition", {"fields": ("description", "applies_to", "emits_shown", "evidence_fields", "source_shown")}),
        ("File", {"fields": ("content_sha256", "parser_sha256")}),
    )
    readonly_fields = (
        *(f.name for f in Rule._meta.fields),
        "errors_shown",
        "warnings_shown",
        "state_shown",
        "history_shown",
        "stats_shown",
        "description",
        "applies_to",
        "emits_shown",
        "evidence_fields",
        "source_shown",
    )
    actions = ["set_state", "enable"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rules are files in the rules directory

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # edit the file; the sync loads it (every minute, or "Sync rules directory now")

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # delete the file; disable the rule to stop it now

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Rule]:
        # The source (up to 64 KiB a rule) is read only where it is shown, on the rule's own page.
        return with_state_and_counts(super().get_queryset(request)).defer("source")

    # --- list columns ------------------------------------------------------------------------------

    @admin.display(description="state", ordering="state_value")
    def state(self, rule: Rule) -> str:
        return describe_state(rule.state_value, rule.state_confidence_max, rule.state_expires_at)

    @admin.display(description="tags", ordering="n_tags")
    def tags_count(self, rule: Rule) -> str:
        if not rule.n_tags:
            return "0"
        url = reverse("admin:ttprules_tag_changelist") + "?" + urlencode({"rule_id": rule.rule_id})
        return format_html('<a href="{}">{}</a>', url, rule.n_tags)

    @admin.display(description="matched", ordering="n_matched")
    def matched_count(self, rule: Rule) -> int:
        return rule.n_matched

    @admin.display(description="shadow tags", ordering="n_shadow_tags")
    def shadow_tags_count(self, rule: Rule) -> int:
        return rule.n_shadow_tags

    @admin.display(description="errors", ordering="n_errors")
    def errors_count(self, rule: Rule) -> int:
        return rule.n_errors

    # --- the rule's page ---------------------------------------------------------------------------

    @admin.display(description="errors")
    def errors_shown(self, rule: Rule) -> str:
        return _lines(rule.errors)

    @admin.display(description="warnings")
    def warnings_shown(self, rule: Rule) -> str:
        return _lines(rule.warnings)

    @admin.display(description="description")
    def description(self, rule: Rule) -> str:
        return (rule.parsed or {}).get("description") or "-"

    @admin.display(description="applies to")
    def applies_to(self, rule: Rule) -> str:
        return ", ".join((rule.parsed or {}).get("applies_to", [])) or "-"

    @admin.display(description="evidence fields")
    def evidence_fields(self, rule: Rule) -> str:
        return ", ".join((rule.parsed or {}).get("evidence_fields", [])) or "-"

    @admin.display(description="emits")
    def emits_shown(self, rule: Rule) -> str:
        emits = (rule.parsed or {}).get("emits", [])
        if not emits:
            return "-"
        rows = [
            (
                f"{emit['tactic']} {_tactic_name(emit['tactic'])}",
                f"{emit['technique_id']} {_technique_name(emit['technique_id'])}",
                f"{emit['sub_technique_id']} {_technique_name(emit['sub_technique_id'])}"
                if emit.get("sub_technique_id")
                else "-",
                emit["confidence"],
            )
            for emit in emits
        ]
        return _table(("tactic", "technique", "sub-technique", "confidence"), rows)

    @admin.display(description="source")
    def source_shown(self, rule: Rule) -> str:
        return format_html('<pre id="rule-source">{}</pre>', rule.source)

    @admin.display(description="current state")
    def state_shown(self, rule: Rule) -> str:
        row = RuleState.objects.filter(rule_id=rule.rule_id).first()
        if row is None:
            return "enabled (no state set)"
        return format_html(
            '<span id="rule-state">{}</span><br>set by {} at {}{}',
            describe_state(row.state, row.confidence_max, row.expires_at),
            row.set_by,
            _moment(row.set_at),
            format_html("<br>reason: {}", row.reason) if row.reason else "",
        )

    @admin.display(description=f"history (newest first, the last {HISTORY_SHOWN})")
    def history_shown(self, rule: Rule) -> str:
        changes = list(RuleStateChange.objects.filter(rule_id=rule.rule_id).order_by("-id")[:HISTORY_SHOWN])
        url = reverse("admin:ttprules_rulestatechange_changelist") + "?" + urlencode({"rule_id__exact": rule.rule_id})
        if not changes:
            return "no state changes"
        rows = [
            (
                _moment(change.set_at),
                change.from_state,
                describe_state(change.to_state, change.confidence_max, change.expires_at),
                change.set_by,
                change.cause,
                change.reason,
            )
            for change in changes
        ]
        table = _table(("set at", "from", "to", "set by", "cause", "reason"), rows, id="rule-history")
        return format_html('{}<a href="{}">all state changes of {}</a>', table, url, rule.rule_id)

    @admin.display(description="engine counters")
    def stats_shown(self, rule: Rule) -> str:
        stats = RuleStats.objects.filter(rule_id=rule.rule_id).first()
        if stats is None:
            return "nothing counted yet (no fact has matched)"
        rows = [
            ("tags written", stats.tags),
            ("facts matched", stats.matched),
            ("shadow tags (would-be tags in shadow state)", stats.shadow_tags),
            ("dropped (confidence below 0.3)", stats.dropped),
            ("evaluation errors", stats.errors),
            ("last matched at", _moment(stats.last_matched_at)),
            ("last error at", _moment(stats.last_error_at)),
            ("last error", stats.last_error or "-"),
        ]
        return _table(("counter", "value"), rows, id="rule-stats")

    # --- pages -------------------------------------------------------------------------------------

    def get_urls(self):
        sync = self.admin_site.admin_view(self.sync_view)
        return [path("sync/", sync, name="ttprules_rule_sync"), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None):
        # States kept for rules whose file is gone: they apply again when the file comes back.
        orphans = RuleState.objects.exclude(state=State.ENABLED).exclude(rule_id__in=Rule.objects.values("rule_id"))
        context = {
            "may_operate": self.has_operate_permission(request),
            "rules_directory": str(settings.STIGMEM_TTP_RULES_DIR),
            "orphan_states": [
                (row.rule_id, describe_state(row.state, row.confidence_max, row.expires_at)) for row in orphans
            ],
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context.update(
                {
                    "may_operate": self.has_operate_permission(request),
                    "rule_state": obj.state_value,
                    "changelist_url": reverse("admin:ttprules_rule_changelist"),
                    "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                    "next_url": request.get_full_path(),
                }
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def sync_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_operate_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            report = store.sync_directory()
        except (store.RulesDirectoryMissing, OSError) as exc:
            self.message_user(request, f"Sync failed: {exc}. The rules loaded before are kept.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:ttprules_rule_changelist"))
        self.message_user(request, f"Synced {report.directory}: {report.summary()}.", messages.SUCCESS)
        for outcome in ("created", "updated", "removed"):
            if rule_ids := getattr(report, outcome):
                self.message_user(request, f"{outcome}: {', '.join(rule_ids)}", messages.INFO)
        for problem in report.invalid[:INVALID_FILES_SHOWN]:
            more = len(problem.errors) - 1
            text = f"{problem.file_name}: {problem.errors[0] if problem.errors else 'invalid'}"
            if more > 0:
                text += f" (and {more} more error{'s' if more > 1 else ''})"
            if not problem.stored:
                text += " — not loaded"
            self.message_user(request, text, messages.WARNING)
        if (left := len(report.invalid) - INVALID_FILES_SHOWN) > 0:
            self.message_user(request, f"… and {left} more invalid file(s).", messages.WARNING)
        return HttpResponseRedirect(reverse("admin:ttprules_rule_changelist"))

    # --- actions -----------------------------------------------------------------------------------

    @admin.action(description="Set state…", permissions=["operate"])
    def set_state(self, request: HttpRequest, queryset: QuerySet[Rule]) -> HttpResponse | None:
        rules = list(queryset.order_by("rule_id"))
        actor = _actor(request)
        if request.POST.get("post") != "yes":
            form = StateForm(actor=actor)
        else:
            form = StateForm(request.POST, actor=actor)
            if form.is_valid():
                try:
                    self._set_all(rules, form.cleaned_data, actor)
                except store.StateInvalid as exc:  # e.g. expires_at passed since the form was checked
                    form.add_state_errors(exc)
                except store.RuleNotFound as exc:
                    form.add_error(
                        None,
                        f"Rule {exc.rule_id} is no longer defined (its file is gone): nothing was changed. "
                        "Go back to the list and select the rules again.",
                    )
                else:
                    data = form.cleaned_data
                    described = describe_state(data["state"], data["confidence_max"], data["expires_at"])
                    ids = ", ".join(rule.rule_id for rule in rules)
                    self.message_user(request, f"Set {len(rules)} rule(s) to {described}: {ids}.", messages.SUCCESS)
                    return self._back(request)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Set the state of TTP rules",
            "form": form,
            "rules": rules,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "next_url": request.POST.get("_next", ""),
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/ttprules/rule/set_state.html", context)

    @staticmethod
    def _set_all(rules: list[Rule], data: dict[str, Any], actor: str) -> None:
        # All or nothing: the form has checked the input for every rule alike; a rule whose file went
        # away meanwhile (RuleNotFound) rolls back the ones already set.
        with transaction.atomic():
            for rule in rules:
                store.set_state(
                    rule.rule_id,
                    data["state"],
                    confidence_max=data["confidence_max"],
                    expires_at=data["expires_at"],
                    reason=data["reason"],
                    set_by=actor,
                )

    @admin.action(description="Enable (clear state)", permissions=["operate"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Rule]) -> HttpResponse | None:
        selected = sorted(queryset.values_list("rule_id", flat=True))
        # Only rules that are not enabled get a change: enabling an enabled rule would only add noise
        # to the history and the event stream.
        stated = list(
            RuleState.objects.filter(rule_id__in=selected)
            .exclude(state=State.ENABLED)
            .order_by("rule_id")
            .values_list("rule_id", flat=True)
        )
        with transaction.atomic():
            for rule_id in stated:
                store.clear_state(rule_id, set_by=_actor(request))
        if stated:
            self.message_user(request, f"Enabled {len(stated)} rule(s): {', '.join(stated)}.", messages.SUCCESS)
        if unchanged := len(selected) - len(stated):
            self.message_user(request, f"{unchanged} rule(s) were enabled already: unchanged.", messages.INFO)
        return self._back(request)

    @staticmethod
    def _back(request: HttpRequest) -> HttpResponse | None:
        """Back to the rule's page when the action came from there; else to the list (None)."""
        target = request.POST.get("_next", "")
        if target and url_has_allowed_host_and_scheme(
            target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return HttpResponseRedirect(target)
        return None


# --- state history ---------------------------------------------------------------------------------


@admin.register(RuleStateChange)
class RuleStateChangeAdmin(ReadOnlyAdmin):
    list_display = (
        "set_at",
        "rule_link",
        "from_state",
        "to_state",
        "confidence_max",
        "expires_at",
        "set_by",
        "cause",
        "short_reason",
    )
    list_filter = ("cause", "to_state")
    search_fields = ("rule_id",)
    date_hierarchy = "set_at"
    ordering = ("-id",)
    readonly_fields = (*(f.name for f in RuleStateChange._meta.fields), "rule_link")
    fields = (
        "id",
        "rule_link",
        "from_state",
        "to_state",
        "confidence_max",
        "expires_at",
        "set_by",
        "set_at",
        "cause",
        "reason",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[RuleStateChange]:
        rule_pk = Subquery(Rule.objects.filter(rule_id=OuterRef("rule_id")).values("pk")[:1])
        return super().get_queryset(request).annotate(rule_pk=rule_pk)

    @admin.display(description="rule", ordering="rule_id")
    def rule_link(self, change: RuleStateChange) -> str:
        if change.rule_pk is None:
            return f"{change.rule_id} (no rule file)"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:ttprules_rule_change", args=[change.rule_pk]), change.rule_id
        )

    @admin.display(description="reason")
    def short_reason(self, change: RuleStateChange) -> str:
        return change.reason if len(change.reason) <= 80 else change.reason[:79] + "…"


# --- tags ------------------------------------------------------------------------------------------


class _ChoicesFromRules(admin.SimpleListFilter):
    """A filter whose choices come from the (small) rules table; a value typed in the URL that no rule
    offers (a rule since removed) still filters and is listed."""

    def choices_from_rules(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        choices = self.choices_from_rules()
        value = self.value()
        if value and value not in {key for key, _ in choices}:
            choices.append((value, value))
        return choices


class TechniqueFilter(_ChoicesFromRules):
    """``T1059`` finds its tags with or without a sub-technique; ``T1059.004`` that sub-technique's."""

    title = "technique"
    parameter_name = "technique"

    def choices_from_rules(self) -> list[tuple[str, str]]:
        ids: set[str] = set()
        for parsed in Rule.objects.filter(valid=True).values_list("parsed", flat=True):
            for emit in (parsed or {}).get("emits", []):
                ids.add(emit["technique_id"])
                if emit.get("sub_technique_id"):
                    ids.add(emit["sub_technique_id"])
        return [(tid, f"{tid} {_technique_name(tid)}".strip()) for tid in sorted(ids)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Tag]) -> QuerySet[Tag]:
        value = self.value()
        if not value:
            return queryset
        return queryset.filter(sub_technique_id=value) if "." in value else queryset.filter(technique_id=value)


class RuleFilter(_ChoicesFromRules):
    title = "rule"
    parameter_name = "rule_id"

    def choices_from_rules(self) -> list[tuple[str, str]]:
        return [(rule_id, rule_id) for rule_id in Rule.objects.order_by("rule_id").values_list("rule_id", flat=True)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Tag]) -> QuerySet[Tag]:
        value = self.value()
        return queryset.filter(rule_id=value) if value else queryset


class EntityFilter(admin.SimpleListFilter):
    """An exact entity typed in the URL (``?entity=...``, linked from a tag's page); no list of choices."""

    title = "entity"
    parameter_name = "entity"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value)] if value else []

    def queryset(self, request: HttpRequest, queryset: QuerySet[Tag]) -> QuerySet[Tag]:
        value = self.value()
        return queryset.filter(entity=value) if value else queryset


@admin.register(Tag)
class TagAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "tenant",
        "entity",
        "rule_id",
        "technique_id",
        "sub_technique_id",
        "tactic",
        "confidence",
    )
    list_filter = (TechniqueFilter, RuleFilter, "tenant", EntityFilter)
    search_fields = ("entity",)
    date_hierarchy = "created_at"
    # Tags can be many: no count of them all on every page, no per-choice counts of the filters.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    list_select_related = False  # never join the tagged fact: its value can be 64 KiB
    fields = (
        "id",
        "tenant",
        "created_at",
        "entity_shown",
        "fact_link",
        "rule_link",
        "rule_version",
        "tactic_shown",
        "technique_shown",
        "sub_technique_shown",
        "confidence",
        "attack_version",
        "evidence_shown",
        "tag_fact_link",
    )
    readonly_fields = fields

    @admin.display(description="entity")
    def entity_shown(self, tag: Tag) -> str:
        url = reverse("admin:ttprules_tag_changelist") + "?" + urlencode({"entity": tag.entity})
        return format_html('{} (<a href="{}">all tags of this entity</a>)', tag.entity, url)

    @admin.display(description="tagged fact")
    def fact_link(self, tag: Tag) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:stigmem_fact_change", args=[tag.fact_id]), tag.fact_id)

    @admin.display(description="ttp:technique fact")
    def tag_fact_link(self, tag: Tag) -> str:
        if tag.tag_fact_id is None:
            return "-"
        url = reverse("admin:stigmem_fact_change", args=[tag.tag_fact_id])
        return format_html('<a href="{}">{}</a>', url, tag.tag_fact_id)

    @admin.display(description="rule")
    def rule_link(self, tag: Tag) -> str:
        pk = Rule.objects.filter(rule_id=tag.rule_id).values_list("pk", flat=True).first()
        if pk is None:
            return f"{tag.rule_id} (no rule file)"
        return format_html('<a href="{}">{}</a>', reverse("admin:ttprules_rule_change", args=[pk]), tag.rule_id)

    @admin.display(description="tactic")
    def tactic_shown(self, tag: Tag) -> str:
        return f"{tag.tactic} {_tactic_name(tag.tactic)}".strip()

    @admin.display(description="technique")
    def technique_shown(self, tag: Tag) -> str:
        return f"{tag.technique_id} {_technique_name(tag.technique_id)}".strip()

    @admin.display(description="sub-technique")
    def sub_technique_shown(self, tag: Tag) -> str:
        if not tag.sub_technique_id:
            return "-"
        return f"{tag.sub_technique_id} {_technique_name(tag.sub_technique_id)}".strip()

    @admin.display(description="evidence")
    def evidence_shown(self, tag: Tag) -> str:
        rows = [
            (name, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
            for name, value in sorted(tag.evidence.items())
        ]
        return _table(("field", "value"), rows, id="tag-evidence") if rows else "-"
