from django.apps import AppConfig


class StigmemConfig(AppConfig):
    name = "stigmem"
    verbose_name = "Stigmem core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from stigmem import sanitizer

        # Compile the operator's sanitizer patterns now: a missing file or a bad regex stops every
        # entry point (runnode, gunicorn workers, manage.py) with its message, not the first read.
        sanitizer.configure()
