"""Rendering every error in the wire contract's shape (WIRE.md §1)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from stigmem.errors import ApiError


def _flatten(detail: Any, loc: list) -> list[dict[str, Any]]:
    """DRF's nested ValidationError detail -> FastAPI-style entries."""
    if isinstance(detail, dict):
        out = []
        for name, inner in detail.items():
            out.extend(_flatten(inner, loc if name == "non_field_errors" else [*loc, name]))
        return out
    if isinstance(detail, list):
        if all(isinstance(item, exceptions.ErrorDetail | str) for item in detail):
            return [{"loc": loc, "msg": str(item), "type": getattr(item, "code", "value_error")} for item in detail]
        out = []
        for index, inner in enumerate(detail):
            out.extend(_flatten(inner, [*loc, index]))
        return out
    return [{"loc": loc, "msg": str(detail), "type": getattr(detail, "code", "value_error")}]


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ApiError):
        return Response(exc.body(), status=exc.status, headers=exc.headers)
    if isinstance(exc, exceptions.ValidationError):
        return Response({"detail": _flatten(exc.detail, ["body"])}, status=422)
    if isinstance(exc, exceptions.ParseError):
        return Response(
            {"detail": [{"loc": ["body"], "msg": f"JSON decode error: {exc.detail}", "type": "json_invalid"}]},
            status=422,
        )
    if isinstance(exc, exceptions.Throttled):
        wait = int(exc.wait or 1)
        return Response(
            {"detail": "rate limit exceeded", "retry_after": wait}, status=429, headers={"Retry-After": str(wait)}
        )
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.NotFound):
        response.data = {"detail": "not found"}
    return response


def not_found_view(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse({"detail": "not found"}, status=404)


def server_error_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"detail": "internal server error"}, status=500)
