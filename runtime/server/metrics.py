"""The server's Prometheus metrics, in a registry of their own (``GET /metrics``).

* ``llmspec_requests_total{endpoint, status}``: answered requests by HTTP status (a stream
  counts with the status it started with);
* ``llmspec_prompt_tokens_total``, ``llmspec_completion_tokens_total``: the ``usage`` counts;
* ``llmspec_requests_cancelled_total``: generations stopped because their client went away;
* ``llmspec_queue_depth``, ``llmspec_running_rows``: the engine's waiting requests and batch
  rows, read at each scrape;
* ``llmspec_time_to_first_token_seconds``: from the request's arrival to its first token;
* ``llmspec_inter_token_latency_seconds``: between a choice's consecutive tokens;
* ``llmspec_request_duration_seconds``: from arrival to the last token (or the answer).

A registry per app (not prometheus-client's global one), so that several apps in one process
(tests) count apart.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a tiny model on a CPU (a millisecond a token) to a large one queued (a minute).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The counters, gauges and histograms of one app; :meth:`text` is the scrape."""

    def __init__(self, queue_depth: Callable[[], float], running: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "llmspec_requests",
            "Requests answered, by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "llmspec_prompt_tokens", "Prompt tokens fed to the model", registry=registry
        )
        self.completion_tokens = Counter(
            "llmspec_completion_tokens", "Tokens generated", registry=registry
        )
        self.cancelled = Counter(
            "llmspec_requests_cancelled",
            "Generations stopped because their client disconnected",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "llmspec_queue_depth", "Requests waiting for a batch row", registry=registry
        )
        self.queue_depth.set_function(queue_depth)
        self.running = Gauge("llmspec_running_rows", "Rows in the running batch", registry=registry)
        self.running.set_function(running)
        self.time_to_first_token = Histogram(
            "llmspec_time_to_first_token_seconds",
            "From a request's arrival to its first generated token",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "llmspec_inter_token_latency_seconds",
            "Between consecutive tokens of one choice",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_duration = Histogram(
            "llmspec_request_duration_seconds",
            "From a request's arrival to its last token or its answer",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Metrics"]
