"""Errors the domain raises, each mapped to one status and body of the wire contract.

Domain functions raise these; ``stigmem.api.errors`` renders them. 422 bodies use the
reference's FastAPI shape: ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Loc = tuple[str | int, ...]


def field_error(loc: Sequence[str | int], msg: str, type_: str) -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": type_}


class ApiError(Exception):
    """An error with its HTTP status and JSON ``detail``."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


class InputInvalid(ApiError):
    """422: the body or the query failed validation."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__(422, errors)


def invalid(loc: Sequence[str | int], msg: str, type_: str = "value_error") -> InputInvalid:
    return InputInvalid([field_error(loc, msg, type_)])


def coded(status: int, code: str, message: str) -> ApiError:
    """A semantic error with a stable code, e.g. 400 ``invalid_entity_uri``."""
    return ApiError(status, {"code": code, "message": message})


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


def forbidden(detail: str) -> ApiError:
    return ApiError(403, detail)
