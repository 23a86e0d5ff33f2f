"""Prometheus metrics of one gateway, in its own registry. Labels are app names, never ids."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

UNKNOWN_APP = "_unknown"  # one label for every unknown app name, so labels stay bounded


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._included: list[CollectorRegistry] = []
        self.launches = Counter("swarmpool_gateway_launches", "Launch clicks by app and outcome",
                                ["app", "outcome"], registry=self.registry)
        self.proxied = Counter("swarmpool_gateway_proxied_requests", "Requests proxied to instances",
                               ["app", "kind"], registry=self.registry)
        self.upstream_errors = Counter("swarmpool_gateway_upstream_errors",
                                       "Proxied requests that got no answer from the instance",
                                       ["app"], registry=self.registry)
        self.ws_open = Gauge("swarmpool_gateway_websockets_open", "WebSocket connections open",
                             ["app"], registry=self.registry)
        self.static_cache = Counter("swarmpool_gateway_static_cache",
                                    "Requests below an app's static paths: hit (answered from the shared cache), "
                                    "pass (the student's instance answered), fill (one fetch from a ready instance)",
                                    ["app", "outcome"], registry=self.registry)
        self.queued = Gauge("swarmpool_queue_waiting", "Students waiting in the app's queue (all gateways)",
                            ["app"], registry=self.registry)
        self.claim_latency = Histogram("swarmpool_gateway_claim_seconds", "Claim request latency",
                                       ["app"], registry=self.registry,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))

    def include(self, *registries: CollectorRegistry) -> None:
        """Serve these registries too (`swarmpool up`: the functions host's, on the gateway's /metrics)."""
        self._included += registries

    def render(self) -> bytes:
        return b"".join(generate_latest(r) for r in (self.registry, *self._included))
