from django.apps import AppConfig


class DecayConfig(AppConfig):
    name = "decay"
    verbose_name = "Decay"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from decay import policies
        from stigmem import confidence, schedules

        confidence.register(policies.effective_confidence)
        schedules.register("decay.sweep", "decay.tasks.scheduled_sweep", minutes=settings.STIGMEM_DECAY_SWEEP_MINUTES)
        schedules.register("decay.resume_jobs", "decay.tasks.resume_jobs", minutes=1)
