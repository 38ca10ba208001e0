"""Delivery metrics (DESIGN.md §9); see stigmem.metrics for the multiprocess setup."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "stigmem_subscription_deliveries",
    "Delivery attempts by outcome (delivered, retry, failed, gone, rejected, released)",
    ["outcome"],
)
DELIVERY_LATENCY = Histogram(
    "stigmem_subscription_delivery_latency_seconds",
    "Time from a delivery's creation to its successful delivery",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0),
)
# Both gauges are read from the database by whichever worker ran last, so the newest value wins.
OPEN_CIRCUITS = Gauge(
    "stigmem_subscription_open_circuits",
    "Subscriptions whose circuit is open or half-open",
    multiprocess_mode="mostrecent",
)
QUEUE_DEPTH = Gauge(
    "stigmem_subscription_queue_depth",
    "Deliveries waiting (pending or being delivered)",
    multiprocess_mode="mostrecent",
)
