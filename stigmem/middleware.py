"""Request middleware: latency metrics by route, and the body size limit (413)."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from stigmem import metrics


class RequestMetricsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None and match.route else "unmatched"
        metrics.REQUEST_LATENCY.labels(
            route=route, method=request.method, status=f"{response.status_code // 100}xx"
        ).observe(time.perf_counter() - started)
        return response


class BodySizeLimitMiddleware:
    """Refuse bodies over STIGMEM_MAX_BODY_BYTES with 413 before anything reads them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.STIGMEM_MAX_BODY_BYTES:
            return JsonResponse(
                {
                    "detail": {
                        "code": "body_too_large",
                        "message": f"request body exceeds {settings.STIGMEM_MAX_BODY_BYTES} bytes",
                    }
                },
                status=413,
            )
        return self.get_response(request)
