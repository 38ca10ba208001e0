"""Shared pieces of the API views."""

from __future__ import annotations

from rest_framework.permissions import BasePermission
from rest_framework.views import APIView

from stigmem.auth import Caller
from stigmem.permissions import require


class NodeView(APIView):
    """An API view whose required permission depends on the HTTP method."""

    permission_by_method: dict[str, str] = {}

    def get_permissions(self) -> list[BasePermission]:
        permission = self.permission_by_method.get(self.request.method, "read")
        return [require(permission)()]

    @property
    def caller(self) -> Caller:
        return self.request.user
