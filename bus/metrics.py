"""Prometheus metrics of one functions host, in a registry of its own (tests run several hosts in
one process). The names are fixed here, once: ``swarmpool_`` prefix, ``_total`` counters,
``_seconds`` durations. Labels are handler, app and reason names, never instance ids.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest


class HostMetrics:
    """What the runtime and the functions of one host count."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.handler_errors = Counter(
            "swarmpool_handler_errors_total", "Handler calls and background passes that raised",
            ["handler"], registry=r)
        self.malformed = Counter(
            "swarmpool_messages_malformed_total", "Bus messages that did not decode, dropped",
            ["handler"], registry=r)
        self.dropped = Counter(
            "swarmpool_messages_dropped_total",
            "Bus messages dropped unhandled (busy: a pass still runs; mismatch: the message contradicts "
            "its subject)", ["handler", "reason"], registry=r)
        self.item_errors = Counter(
            "swarmpool_item_errors_total", "Failures of one item of a pass (the pass went on)",
            ["step"], registry=r)
        self.claims = Counter(
            "swarmpool_claims_total", "Claim requests answered, by app and result", ["app", "result"],
            registry=r)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when it was never counted): for tests and status."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
