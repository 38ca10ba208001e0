"""The operator console: one module per area, each registering its models."""

from stigmem.admin import core  # noqa: F401
