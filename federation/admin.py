"""Federation in the operator console: peers, their replication state, the connect flow, the audit trail.

Operators change a peer only through the actions and the connect view, which call
``federation.handshake`` and ``federation.pull`` like the API and the commands do, so every change
is checked and audited there (actor ``admin:<username>``). The plain add and edit forms are
closed: a raw edit would bypass those checks, and saving a stale form would overwrite the
cursors the puller keeps in the same row.

Approving asks the operator to paste the fingerprint the remote operator gave them out of band;
approval is refused unless it matches the peer's registered key. "Pull now" pulls synchronously
within a short budget, so the operator sees the outcome on the next page.

The federation audit log is the audit admin filtered to federation event types (a link, no
second listing of the same table).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters

from federation import handshake, pull
from federation.models import Peer
from stigmem.errors import ApiError

# Every federation audit event type starts with one of these (see federation/ and the wire contract).
FEDERATION_EVENTS = r"^(peer|federation)_"
# "Pull now" runs in the admin's request: each peer gets a short budget, and the whole request a
# cap, so selecting many peers cannot hold the page for minutes. Peers left over are pulled by
# the scheduled task as usual.
PULL_NOW_BUDGET_S = 10.0
PULL_NOW_TOTAL_S = 30.0
CONNECT_SCOPES = ("team", "company", "public")


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def audit_url(peer: Peer | None = None) -> str:
    """The audit admin's changelist showing federation events only (of one peer, if given)."""
    query = {"event_type__regex": FEDERATION_EVENTS}
    if peer is not None:
        query["target"] = peer.peer_id
    return reverse("admin:stigmem_auditevent_changelist") + "?" + urlencode(query)


class ConnectForm(forms.Form):
    # Checked by ``handshake.connect`` like on the command line; a URLField would refuse a host
    # without a dot (``http://node-a:8000``), which is fine between containers.
    url = forms.CharField(
        label="Remote node URL",
        max_length=Peer._meta.get_field("node_url").max_length,
        help_text="The base URL of the other node, e.g. https://node.example.org",
    )
    # Used for this one request to the remote and then dropped: never stored, logged or shown again.
    api_key = forms.CharField(
        label="Remote API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="A key of the remote node with the federate permission, given to you by its operator.",
    )
    scopes = forms.MultipleChoiceField(
        choices=[(scope, scope) for scope in CONNECT_SCOPES],
        initial=["company", "public"],
        widget=forms.CheckboxSelectMultiple,
        help_text="The scopes both nodes exchange (team facts are served only with STIGMEM_FEDERATION_ALLOW_TEAM).",
    )
    tenant = forms.CharField(
        max_length=Peer._meta.get_field("tenant").max_length,
        help_text="The local tenant whose facts are served to this peer and into which its facts are stored.",
    )


@admin.register(Peer)
class PeerAdmin(admin.ModelAdmin):
    list_display = (
        "node_id",
        "status",
        "tenant",
        "node_url",
        "short_fingerprint",
        "scopes",
        "origin",
        "established_at",
        "last_pull_at",
        "last_pull_outcome",
        "lag",
        "facts_ingested",
        "facts_rejected",
        "next_pull_at",
        "consecutive_failures",
    )
    list_filter = ("status", "tenant", "origin")
    search_fields = ("node_id", "node_url")
    ordering = ("tenant", "node_id")
    fieldsets = (
        (
            "Agreement",
            {
                "fields": (
                    "id",
                    "node_id",
                    "node_url",
                    "tenant",
                    "status",
                    "origin",
                    "fingerprint",
                    "federation_pubkey",
                    "scopes",
                    "created_at",
                    "signed_at",
                    "established_at",
                    "approved_by",
                    "status_changed_at",
                    "audit_link",
                )
            },
        ),
        (
            "Replication",
            {
                "fields": (
                    "fact_cursor",
                    "tombstone_cursor",
                    "last_pull_at",
                    "last_pull_outcome",
                    "last_pull_error",
                    "next_pull_at",
                    "consecutive_failures",
                    "facts_ingested",
                    "facts_rejected",
                    "tombstones_ingested",
                    "newest_ingested_at",
                    "lag",
                    "pull_lease_owner",
                    "pull_lease_until",
                )
            },
        ),
    )
    readonly_fields = [f.name for f in Peer._meta.fields] + ["fingerprint", "scopes", "lag", "audit_link"]
    actions = ["approve", "suspend", "resume", "revoke", "pull_now", "reset_cursor"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # peers are added by the connect view or by the remote's declaration

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # viewable; changed only through the actions

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # revoke instead: the row keeps the agreement's history and the audit its target

    def has_operate_permission(self, request: HttpRequest) -> bool:
        # The actions need Django's change permission on peers (superusers have it), even though the
        # edit form itself is closed to everyone.
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    def has_connect_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.add_{self.opts.model_name}")

    # --- columns and read-only fields ------------------------------------------------------------

    @admin.display(description="fingerprint")
    def short_fingerprint(self, peer: Peer) -> str:
        full = handshake.fingerprint(peer.federation_pubkey)
        # Abbreviated in the list; the change page shows it whole, which is what gets compared.
        return format_html('<code title="{}">{}…</code>', full, full[:19])

    @admin.display(description="key fingerprint")
    def fingerprint(self, peer: Peer) -> str:
        return format_html("<code>{}</code>", handshake.fingerprint(peer.federation_pubkey))

    @admin.display(description="allowed scopes")
    def scopes(self, peer: Peer) -> str:
        return ", ".join(peer.allowed_scopes)

    @admin.display(description="lag", ordering="lag_seconds")
    def lag(self, peer: Peer) -> str:
        return _duration(peer.lag_seconds)

    @admin.display(description="audit")
    def audit_link(self, peer: Peer) -> str:
        return format_html('<a href="{}">federation audit events of this peer</a>', audit_url(peer))

    # --- pages -----------------------------------------------------------------------------------

    def get_urls(self):
        connect = self.admin_site.admin_view(self.connect_view)
        return [path("connect/", connect, name="federation_peer_connect"), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None):
        context = {
            "federation_enabled": settings.STIGMEM_FEDERATION_ENABLED,
            "federation_audit_url": audit_url(),
            "may_connect": self.has_connect_permission(request),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context.update(
                {
                    "peer_fingerprint": handshake.fingerprint(obj.federation_pubkey),
                    "own_fingerprint": handshake.own_fingerprint(),
                    "may_operate": self.has_operate_permission(request),
                    "changelist_url": reverse("admin:federation_peer_changelist"),
                    "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                }
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    @method_decorator(sensitive_post_parameters("api_key"))
    def connect_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_connect_permission(request):
            raise PermissionDenied
        initial = {"tenant": settings.STIGMEM_DEFAULT_TENANT, "scopes": ["company", "public"]}
        form = ConnectForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                result = handshake.connect(
                    data["url"],
                    api_key=data["api_key"] or None,
                    scopes=sorted(data["scopes"]),
                    tenant=data["tenant"],
                    actor=_actor(request),
                )
            except handshake.ConnectFailed as exc:
                form.add_error(None, str(exc))
            else:
                context = {
                    **self.admin_site.each_context(request),
                    "opts": self.opts,
                    "title": "Connected to a peer",
                    "result": result,
                    "peer": result.peer,
                    "peer_url": reverse("admin:federation_peer_change", args=[result.peer.pk]),
                    "changelist_url": reverse("admin:federation_peer_changelist"),
                    "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                }
                return TemplateResponse(request, "admin/federation/peer/connect_result.html", context)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Connect to a peer",
            "form": form,
            "federation_enabled": settings.STIGMEM_FEDERATION_ENABLED,
            "own_fingerprint": handshake.own_fingerprint(),
        }
        return TemplateResponse(request, "admin/federation/peer/connect.html", context)

    def _confirmation(self, request: HttpRequest, template: str, **context: Any) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            **context,
        }
        return TemplateResponse(request, f"admin/federation/peer/{template}", context)

    # --- actions ---------------------------------------------------------------------------------

    @admin.action(description="Approve the selected peers (confirm their fingerprints)", permissions=["operate"])
    def approve(self, request: HttpRequest, queryset: QuerySet[Peer]) -> TemplateResponse | None:
        pending = [peer for peer in queryset if peer.status == Peer.Status.PENDING_APPROVAL]
        for peer in queryset:
            if peer.status != Peer.Status.PENDING_APPROVAL:
                self.message_user(request, f"{peer.node_id} is {peer.status}, not pending approval.", messages.WARNING)
        if not pending:
            return None
        typed = {peer.pk: request.POST.get(f"fingerprint_{peer.pk}", "").strip() for peer in pending}
        missing = request.POST.get("post") == "yes" and not all(typed.values())
        if request.POST.get("post") != "yes" or missing:
            rows = [
                {"peer": peer, "fingerprint": handshake.fingerprint(peer.federation_pubkey), "typed": typed[peer.pk]}
                for peer in pending
            ]
            return self._confirmation(
                request, "approve.html", title="Approve peers", rows=rows, missing=missing, queryset=pending
            )
        for peer in pending:
            try:
                handshake.approve(peer.tenant, peer.peer_id, typed[peer.pk], _actor(request))
            except ApiError as exc:
                self.message_user(request, f"{peer.node_id} not approved: {exc.detail}", messages.ERROR)
            else:
                self.message_user(request, f"Approved {peer.node_id}: it is active.", messages.SUCCESS)
        return None

    def _change_status(self, request: HttpRequest, queryset: QuerySet[Peer], action: str, verb: str) -> None:
        done = 0
        for peer in queryset:
            try:
                handshake.change_status(peer.tenant, peer.peer_id, action, _actor(request))
            except ApiError as exc:
                self.message_user(request, f"{peer.node_id}: {exc.detail}", messages.ERROR)
            else:
                done += 1
        if done:
            self.message_user(request, f"{verb} {done} peer(s).", messages.SUCCESS)

    @admin.action(
        description="Suspend the selected peers (no serving or pulling until resumed)", permissions=["operate"]
    )
    def suspend(self, request: HttpRequest, queryset: QuerySet[Peer]) -> None:
        self._change_status(request, queryset, "suspend", "Suspended")

    @admin.action(description="Resume the selected suspended peers", permissions=["operate"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Peer]) -> None:
        self._change_status(request, queryset, "resume", "Resumed")

    @admin.action(description="Revoke the selected peers (final)", permissions=["operate"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Peer]) -> TemplateResponse | None:
        if request.POST.get("post") != "yes":
            return self._confirmation(
                request,
                "confirm_action.html",
                title="Revoke peers",
                action="revoke",
                queryset=queryset,
                question="Revoke the federation agreement with these peers?",
                explanation=(
                    "A revoked peer's tokens are refused and it is no longer pulled. Revoking is final: "
                    "to federate with the node again, it has to be connected and approved anew."
                ),
                button="Yes, revoke",
            )
        self._change_status(request, queryset, "revoke", "Revoked")
        return None

    @admin.action(description="Pull now from the selected active peers", permissions=["operate"])
    def pull_now(self, request: HttpRequest, queryset: QuerySet[Peer]) -> None:
        deadline = time.monotonic() + PULL_NOW_TOTAL_S
        for peer in queryset:
            if peer.status != Peer.Status.ACTIVE:
                self.message_user(request, f"{peer.node_id} is {peer.status}: not pulled.", messages.WARNING)
                continue
            remaining = deadline - time.monotonic()
            if remaining < 1:
                self.message_user(
                    request, f"{peer.node_id}: not pulled now (time is up); the scheduled pull takes it.", messages.INFO
                )
                continue
            result = pull.pull_peer(peer, budget_s=min(PULL_NOW_BUDGET_S, remaining))
            if result.outcome in (pull.BUSY, pull.NOT_ACTIVE):
                why = (
                    "another worker is pulling it right now"
                    if result.outcome == pull.BUSY
                    else "it is no longer active"
                )
                self.message_user(request, f"{peer.node_id}: not pulled, {why}.", messages.WARNING)
                continue
            summary = (
                f"{peer.node_id}: {result.outcome}, {result.pages} page(s), "
                f"{result.ingested} fact(s) ingested, {result.rejected} rejected"
            )
            if result.lag_seconds is not None:
                summary += f", lag {_duration(result.lag_seconds)}"
            if result.more_pending:
                summary += "; more is waiting, the scheduled pull continues"
            if result.error:
                self.message_user(request, f"{summary}. Error: {result.error}", messages.ERROR)
            else:
                self.message_user(request, f"{summary}.", messages.SUCCESS)

    @admin.action(
        description="Reset the pull cursors (pull the peer's log again from the start)", permissions=["operate"]
    )
    def reset_cursor(self, request: HttpRequest, queryset: QuerySet[Peer]) -> TemplateResponse | None:
        if request.POST.get("post") != "yes":
            return self._confirmation(
                request,
                "confirm_action.html",
                title="Reset pull cursors",
                action="reset_cursor",
                queryset=queryset,
                question="Reset the pull cursors of these peers?",
                explanation=(
                    "The next pull asks each peer for its facts and tombstones from the start. Facts "
                    "already stored are recognised by id and skipped, so nothing is duplicated, but a "
                    "large log takes a while to page through again."
                ),
                button="Yes, reset",
            )
        for peer in queryset:
            pull.reset_cursor(peer, _actor(request))
        self.message_user(request, f"Reset the cursors of {queryset.count()} peer(s).", messages.SUCCESS)
        return None
