"""Prometheus metrics of one functions host, in a registry of its own (tests run several hosts in
one process). The names are fixed here, once: ``swarmpool_`` prefix, ``_total`` counters,
``_seconds`` durations. Labels are handler, app and reason names, never instance ids.
"""

from __future__ import annotations

import re
import statistics
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from swarmpool.bus.messages import STATES, Instance

if TYPE_CHECKING:
    from swarmpool.bus.state import InstanceStore

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
READY_BUCKETS = (1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)
RECENT = 100  # claims per app remembered for `admin status`


def reason_label(reason: str) -> str:
    """A bounded label for a free-text reason ("idle 612 s > 600 s" -> "idle"): its leading words."""
    words = re.match(r"[a-z ]*", reason.lower())
    label = (words.group(0) if words else "").strip()
    return label[:40] or "other"


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
        self.claim_seconds = Histogram(
            "swarmpool_claim_seconds", "Time from a claim request to the instance handed out", ["app"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.ready_seconds = Histogram(
            "swarmpool_time_to_ready_seconds", "Time from an instance's creation to passing its probe "
            "(each host that sees the transition counts it)", ["app"], buckets=READY_BUCKETS, registry=r)
        self.retirements = Counter(
            "swarmpool_retirements_total", "Instances that began retiring, by the leading words of the reason "
            "(each host that sees the transition counts it)", ["app", "reason"], registry=r)
        self.reconcile_seconds = Histogram(
            "swarmpool_reconcile_seconds", "Duration of one reconcile pass of this host's keeper (one listing each of "
            "services, tasks and nodes, then the fixes and top-ups)", buckets=LATENCY_BUCKETS, registry=r)
        self.admin_commands = Counter(
            "swarmpool_admin_commands_total", "Admin service requests answered by this host", ["verb", "result"],
            registry=r)
        self._recent_claims: dict[str, deque[float]] = {}

    def observe_claim(self, app: str, seconds: float) -> None:
        self.claim_seconds.labels(app).observe(seconds)
        self._recent_claims.setdefault(app, deque(maxlen=RECENT)).append(seconds)

    def recent_claim_seconds(self, app: str) -> float | None:
        """Median of this host's recent claims of `app` (None before the first)."""
        recent = self._recent_claims.get(app)
        return statistics.median(recent) if recent else None

    def follow(self, store: "InstanceStore", targets: Callable[[], dict[str, int]]) -> Callable[[], None]:
        """Pool sizes per app and state, read from the mirror at scrape time; transitions the mirror
        sees counted (time to ready, retirements). Returns the function that stops following."""
        collector = _PoolCollector(store, targets)
        self.registry.register(collector)

        def on_change(old: Instance | None, new: Instance | None) -> None:
            if new is None or (old is not None and old.state == new.state):
                return
            if new.state == "ready" and new.ready_at is not None:
                self.ready_seconds.labels(new.app).observe(max(0.0, new.ready_at - new.created_at))
            elif new.state == "retiring":
                self.retirements.labels(new.app, reason_label(new.reason)).inc()

        stop = store.on_change(on_change)

        def unfollow() -> None:
            stop()
            self.registry.unregister(collector)
        return unfollow

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when it was never counted): for tests and status."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PoolCollector(Collector):
    """``swarmpool_pool_instances{app,state}`` and ``swarmpool_pool_target{app}`` at scrape time."""

    def __init__(self, store: "InstanceStore", targets: Callable[[], dict[str, int]]) -> None:
        self._store = store
        self._targets = targets

    def collect(self) -> Iterator[GaugeMetricFamily]:
        targets = self._targets()
        sizes = GaugeMetricFamily("swarmpool_pool_instances", "Instances per app and record state",
                                  labels=["app", "state"])
        counts: dict[tuple[str, str], int] = {(app, state): 0 for app in targets for state in STATES}
        for r in self._store.all():
            counts[(r.app, r.state)] = counts.get((r.app, r.state), 0) + 1
        for (app, state), n in sorted(counts.items()):
            sizes.add_metric([app, state], n)
        yield sizes
        target = GaugeMetricFamily("swarmpool_pool_target", "Ready instances each app's pool keeps now",
                                   labels=["app"])
        for app, n in sorted(targets.items()):
            target.add_metric([app], n)
        yield target

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
