"""Prometheus metrics (DESIGN.md §9), safe across gunicorn and qcluster processes.

``runnode`` points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before it starts the
processes; each process then writes its samples there and ``/metrics`` aggregates them.
Labels stay low-cardinality: route names, never raw paths or ids.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

FACTS_WRITTEN = Counter("stigmem_facts_written", "Facts stored, by where they came from", ["origin"])
FACTS_READ = Counter("stigmem_facts_read", "Fact records returned to callers")
CONTRADICTIONS = Counter("stigmem_contradictions", "Conflicts recorded between facts")
REQUEST_LATENCY = Histogram(
    "stigmem_http_request_duration_seconds",
    "HTTP request latency by route",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
TTP_FACTS_EVALUATED = Counter("stigmem_ttp_facts_evaluated", "Facts evaluated by the TTP rules")
TTP_EVALUATION_SECONDS = Counter("stigmem_ttp_evaluation_seconds", "Time spent evaluating facts against TTP rules")
TTP_TAGS_WRITTEN = Counter("stigmem_ttp_tags_written", "New TTP tags written")
TTP_RULE_ERRORS = Counter("stigmem_ttp_rule_errors", "TTP rule evaluations that raised")


def render() -> tuple[bytes, str]:
    """The metrics page, aggregated over every process when running multiprocess."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
