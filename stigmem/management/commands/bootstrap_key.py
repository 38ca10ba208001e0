"""``manage.py bootstrap_key``: issue the first admin API key of a tenant (for ops and cron)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from stigmem.bootstrap import ensure_bootstrap_key


class Command(BaseCommand):
    help = "Create an admin API key for a tenant that has none (prints it once)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--tenant", help="tenant id (default: STIGMEM_DEFAULT_TENANT)")
        parser.add_argument("--entity", help="entity URI of the key's holder")
        parser.add_argument("--force", action="store_true", help="issue a new key even if one exists")

    def handle(self, *args, tenant: str | None, entity: str | None, force: bool, **options) -> None:
        result = ensure_bootstrap_key(tenant, force=force, entity_uri=entity)
        if result.issued is None:
            self.stdout.write(
                f"tenant already has {result.existing} active admin key(s); nothing created (use --force)"
            )
            return
        key = result.issued.key
        self.stdout.write(f"tenant:   {key.tenant}\nentity:   {key.entity_uri}\napi key:  {result.issued.raw_key}")
