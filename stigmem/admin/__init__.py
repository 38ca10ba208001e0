"""The operator console: one module per area, each registering its models."""

from stigmem.admin import audit, core, gardens, tombstones  # noqa: F401
