"""DRF permission classes: authenticated callers, and one named permission per endpoint."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from rest_framework.exceptions import NotAuthenticated, PermissionDenied
from rest_framework.permissions import BasePermission

from stigmem.auth import Caller

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView


class IsAuthenticatedCaller(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        if not isinstance(request.user, Caller):
            raise NotAuthenticated("authentication required: send 'Authorization: Bearer <api key>'")
        return True


@cache
def require(permission: str) -> type[BasePermission]:
    """A permission class requiring ``permission`` (``admin`` implies it)."""

    class Required(IsAuthenticatedCaller):
        def has_permission(self, request: Request, view: APIView) -> bool:
            super().has_permission(request, view)
            if not request.user.has(permission):
                raise PermissionDenied(f"{permission} permission required")
            return True

    Required.__name__ = f"Require_{permission.replace(':', '_').replace('.', '_')}"
    return Required


def caller_of(request: Request) -> Caller:
    return request.user
