from __future__ import annotations

from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.core import checks


class TtprulesConfig(AppConfig):
    name = "ttprules"
    verbose_name = "TTP rules"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from stigmem import logtail, schedules
        from stigmem.models import ConsumerCursor
        from ttprules import engine

        # The rules directory is re-read every minute (an unchanged file costs a hash, no parse), and
        # states whose expires_at has passed revert to enabled within a minute.
        schedules.register("ttprules.sync", "ttprules.tasks.sync_rules", minutes=1)
        schedules.register("ttprules.expire_states", "ttprules.tasks.expire_rule_states", minutes=1)
        logtail.register(
            engine.CONSUMER,
            ConsumerCursor.Log.FACTS,
            engine.handle_batch,
            engine.BATCH_SIZE,
            only=engine.LOG_COLUMNS,
            prepare=engine.evaluate_batch,
        )
        checks.register(rules_directory_check)


def rules_directory_check(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A warning, not an error, at start (runnode, migrate): the node runs without rules, and every sync
    fails with the same message until the directory is there; the rules loaded before are kept."""
    from django.conf import settings

    directory = Path(settings.STIGMEM_TTP_RULES_DIR)
    if directory.is_dir():
        return []
    return [
        checks.Warning(
            f"STIGMEM_TTP_RULES_DIR {directory} does not exist or is not a directory",
            hint="point it at a directory of <rule_id>.yaml files; TTP rule syncs fail until then",
            id="ttprules.W001",
        )
    ]
