from django.apps import AppConfig


class StigmemConfig(AppConfig):
    name = "stigmem"
    verbose_name = "Stigmem core"
    default_auto_field = "django.db.models.BigAutoField"
