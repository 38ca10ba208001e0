from django.apps import AppConfig


class FederationConfig(AppConfig):
    name = "federation"
    verbose_name = "Federation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from stigmem import schedules

        # Pull every active peer each interval; prune the nonce store hourly.
        minutes = max(1, round(settings.STIGMEM_FEDERATION_PULL_INTERVAL_S / 60))
        schedules.register("federation.pull", "federation.tasks.pull_due_peers", minutes=minutes)
        schedules.register("federation.prune_nonces", "federation.tasks.prune_nonces", minutes=60)
