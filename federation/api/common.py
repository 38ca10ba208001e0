"""Pieces shared by the federation views."""

from __future__ import annotations

from django.conf import settings
from rest_framework.request import Request

from stigmem.errors import ApiError


def require_enabled(request: Request) -> None:
    """Every federation endpoint answers 404 while STIGMEM_FEDERATION_ENABLED is off."""
    if not settings.STIGMEM_FEDERATION_ENABLED:
        raise ApiError(404, "federation is not enabled on this node")
