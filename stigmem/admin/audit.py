"""The operator console for the audit log: read-only, filterable, searchable."""

from __future__ import annotations

import json

from django.contrib import admin
from django.utils.html import format_html

from stigmem.admin.core import ReadOnlyAdmin
from stigmem.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant", "event_type", "actor", "target", "short_detail")
    list_filter = ("tenant", "event_type")
    date_hierarchy = "created_at"
    search_fields = ("actor", "target")
    ordering = ("-id",)
    show_full_result_count = False
    fields = ("id", "created_at", "tenant", "event_type", "actor", "target", "pretty_detail")
    readonly_fields = fields

    @admin.display(description="detail")
    def short_detail(self, event: AuditEvent) -> str:
        text = json.dumps(event.detail, sort_keys=True, ensure_ascii=False)
        return text if len(text) <= 100 else text[:99] + "…"

    @admin.display(description="detail")
    def pretty_detail(self, event: AuditEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.detail, indent=2, sort_keys=True, ensure_ascii=False))
