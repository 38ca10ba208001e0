"""Typed fact values (WIRE.md §2.2): validation, the stored ``value_v`` string, and decoding.

``value_v`` is the CID input. Reads decode it so that ``str(v)`` gives ``value_v`` back
exactly: an integer stays an integer, ``42.0`` stays a float.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stigmem.errors import ApiError, InputInvalid, field_error
from stigmem.limits import MAX_STRING_BYTES, MAX_TEXT_BYTES

VALUE_TYPES = ("string", "text", "number", "boolean", "datetime", "ref", "null")
INTERPRETATIONS = ("content", "instruction")
_TEXT_LIMITS = {"string": MAX_STRING_BYTES, "text": MAX_TEXT_BYTES}
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")
_INTEGER = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class TypedValue:
    value_type: str
    value_v: str
    interpret_as: str


def parse_iso_datetime(text: str) -> datetime:
    """Parse ISO-8601 (``Z`` allowed); raises ValueError, also for an instant outside UTC's years 1-9999."""
    # fromisoformat takes any character as the date/time separator and ignores a trailing NUL.
    if not text or len(text) > 64 or text_problem(text) is not None:
        raise ValueError("not an ISO-8601 datetime")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is not None:
        try:
            # The databases store UTC: 9999-12-31T23:00-05:00 cannot be stored, and PostgreSQL
            # refuses offsets beyond ±15:59 (Python allows up to ±23:59).
            parsed = parsed.astimezone(UTC)
        except OverflowError:
            raise ValueError("datetime out of range") from None
    return parsed


def text_problem(text: str) -> str | None:
    """Why a string cannot be stored (PostgreSQL refuses NUL) or hashed (lone surrogates), or None."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def parse_value(raw: Any, loc: Sequence[str | int]) -> TypedValue:
    """Validate an assert body's ``value`` object; raises InputInvalid or 413."""
    if not isinstance(raw, dict):
        raise InputInvalid([field_error(loc, "value must be an object", "dict_type")])
    value_type = raw.get("type")
    if value_type not in VALUE_TYPES:
        raise InputInvalid(
            [
                field_error(
                    [*loc, "type"],
                    f"value type must be one of {', '.join(VALUE_TYPES)}",
                    "literal_error",
                )
            ]
        )
    interpret_as = raw.get("interpret_as", "content")
    if interpret_as is None:
        interpret_as = "content"
    if interpret_as not in INTERPRETATIONS:
        raise InputInvalid(
            [
                field_error(
                    [*loc, "interpret_as"],
                    "interpret_as must be 'content' or 'instruction'",
                    "literal_error",
                )
            ]
        )
    v = raw.get("v")
    v_loc = [*loc, "v"]
    return TypedValue(value_type, _encode(value_type, v, v_loc), interpret_as)


def _encode(value_type: str, v: Any, loc: list[str | int]) -> str:
    if value_type in _TEXT_LIMITS:
        if not isinstance(v, str):
            raise InputInvalid([field_error(loc, f"{value_type} value must be a string", "string_type")])
        problem = text_problem(v)
        if problem is not None:
            raise InputInvalid([field_error(loc, f"{value_type} value {problem}", "string_unicode")])
        limit = _TEXT_LIMITS[value_type]
        if len(v) > limit // 4 and len(v.encode("utf-8")) > limit:
            raise ApiError(
                413,
                {
                    "code": "value_too_large",
                    "message": f"{value_type} value exceeds {limit} bytes",
                },
            )
        return v
    if value_type == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputInvalid([field_error(loc, "number value must be a JSON number", "number_type")])
        if isinstance(v, float) and not math.isfinite(v):
            raise InputInvalid([field_error(loc, "number value must be finite", "finite_number")])
        return str(v)
    if value_type == "boolean":
        if not isinstance(v, bool):
            raise InputInvalid([field_error(loc, "boolean value must be true or false", "bool_type")])
        return "true" if v else "false"
    if value_type == "datetime":
        if not isinstance(v, str):
            raise InputInvalid([field_error(loc, "datetime value must be a string", "string_type")])
        try:
            parse_iso_datetime(v)
        except ValueError:
            raise InputInvalid(
                [field_error(loc, "datetime value must be an ISO-8601 string", "datetime_parsing")]
            ) from None
        return v
    if value_type == "ref":
        if not isinstance(v, str) or len(v) > MAX_STRING_BYTES or not _URI_SCHEME.match(v) or text_problem(v):
            raise InputInvalid(
                [field_error(loc, "ref value must be a URI with a scheme (e.g. stigmem://...)", "ref_format")]
            )
        return v
    # null
    if v is not None:
        raise InputInvalid([field_error(loc, "null value must be absent or null", "none_required")])
    return "null"


def decode_value(value_type: str, value_v: str) -> Any:
    """The JSON value for a stored ``value_v`` such that ``str(result) == value_v``."""
    if value_type == "number":
        return int(value_v) if _INTEGER.match(value_v) else float(value_v)
    if value_type == "boolean":
        return value_v == "true"
    if value_type == "null":
        return None
    return value_v
