"""Prometheus metrics shared by every service; business counters live with their service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter("pinwheel_http_requests_total", "HTTP requests", ["service", "route", "method", "status"])
HTTP_LATENCY = Histogram("pinwheel_http_request_seconds", "HTTP request latency", ["service", "route", "method"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
EVENTS_CONSUMED = Counter("pinwheel_events_consumed_total", "Events consumed, by outcome",
                          ["service", "topic", "type", "outcome"])
EVENTS_DEAD_LETTERED = Counter("pinwheel_events_dead_lettered_total", "Records sent to a DLQ",
                               ["service", "topic", "reason"])
HANDLER_LATENCY = Histogram("pinwheel_handler_seconds", "Event handler latency", ["service", "type"],
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
EVENTS_PUBLISHED = Counter("pinwheel_events_published_total", "Events published", ["service", "type"])
OUTBOX_BACKLOG = Gauge("pinwheel_outbox_backlog", "Documents whose events are not yet published", ["service"])
CONSUMER_LAG = Gauge("pinwheel_consumer_lag", "Records behind the end of the partition",
                     ["service", "topic", "partition"])
