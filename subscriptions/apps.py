from django.apps import AppConfig


class SubscriptionsConfig(AppConfig):
    name = "subscriptions"
    verbose_name = "Subscriptions and webhook delivery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from subscriptions import dispatch

        # Dispatch tails the fact log and the Event log (DESIGN.md §3).
        dispatch.register()

        from stigmem import schedules

        # Delivery: a sweep every minute behind the on-commit kicks; daily retention pruning.
        schedules.register("subscriptions.deliver", "subscriptions.tasks.run_deliveries", minutes=1)
        schedules.register("subscriptions.prune_deliveries", "subscriptions.tasks.prune_deliveries", minutes=1440)
