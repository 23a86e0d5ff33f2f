"""Every NATS subject swarmpool uses, in one place.

Subjects are namespaced by a prefix (default ``sp``) so that several swarmpools, or a
test run beside a live one, can share a NATS server without seeing each other.
"""

from __future__ import annotations

from swarmpool.bus.messages import Period

DEFAULT_PREFIX = "sp"

# queue groups: several function hosts share the work of one subject
QUEUE_FUNCTIONS = "swarmpool-functions"


class Subjects:
    """Builders for the subjects of one swarmpool namespace."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix

    def claim(self, app: str) -> str:
        """Request/reply: a gateway asks the claimers for one ready instance of `app`."""
        return f"{self.prefix}.claim.{app}"

    def claim_all(self) -> str:
        """Wildcard the claimers subscribe to."""
        return f"{self.prefix}.claim.*"

    def release(self, app: str) -> str:
        """Request/reply: a gateway asks the claimers to end one browser's sessions of `app` (its limit page)."""
        return f"{self.prefix}.release.{app}"

    def release_all(self) -> str:
        """Wildcard the claimers subscribe to for releases."""
        return f"{self.prefix}.release.*"

    def queue_seen(self, app: str) -> str:
        """Publish: a gateway still holds some tickets' waiting pages of `app` (every functions host hears it)."""
        return f"{self.prefix}.queue.seen.{app}"

    def queue_seen_all(self) -> str:
        """Wildcard the queue's hosts subscribe to."""
        return f"{self.prefix}.queue.seen.*"

    def activity(self, app: str, instance_id: str) -> str:
        """Publish: a gateway reports client traffic and open connections of one instance."""
        return f"{self.prefix}.activity.{app}.{instance_id}"

    def activity_all(self) -> str:
        """Wildcard the activity handler subscribes to."""
        return f"{self.prefix}.activity.*.*"

    def settled(self, app: str, instance_id: str) -> str:
        """Publish: a gateway saw a claimed instance's page load (the keeper refills after it)."""
        return f"{self.prefix}.settled.{app}.{instance_id}"

    def settled_all(self) -> str:
        """Wildcard the keeper subscribes to for settle signals."""
        return f"{self.prefix}.settled.*.*"

    def instance_event(self, app: str, instance_id: str, event: str) -> str:
        """Publish (kept in the event stream): one lifecycle transition of one instance (an EventKind)."""
        return f"{self.prefix}.instance.{app}.{instance_id}.{event}"

    def instance_events_all(self) -> str:
        """Wildcard for every instance event (the event stream's subject)."""
        return f"{self.prefix}.instance.>"

    def visit(self, app: str, kind: str) -> str:
        """Publish (kept in the event stream): a gateway's record of a click or a page load (a Visit)."""
        return f"{self.prefix}.visit.{app}.{kind}"

    def visits_all(self) -> str:
        """Wildcard for every visit (the event stream's subject, the gateway's permission)."""
        return f"{self.prefix}.visit.*.*"

    def docker(self, type_: str, action: str) -> str:
        """Publish: one Docker engine event about a container or service of ours."""
        return f"{self.prefix}.docker.{type_}.{action}"

    def docker_all(self) -> str:
        """Wildcard the docker_events handler subscribes to."""
        return f"{self.prefix}.docker.>"

    def tick(self, period: Period) -> str:
        """Publish: the clock's periodic tick (a typo is a ValueError, not a silent dead subscription)."""
        return f"{self.prefix}.tick.{Period(period)}"

    def tick_all(self) -> str:
        """Wildcard for every tick (bus permissions)."""
        return f"{self.prefix}.tick.*"

    def admin_all(self) -> str:
        """Wildcard for every operator command (bus permissions)."""
        return f"{self.prefix}.admin.*"

    def admin(self, verb: str) -> str:
        """Request/reply: an endpoint of the admin service (the verbs of functions/admin.py)."""
        return f"{self.prefix}.admin.{verb}"

    def audit(self, verb: str) -> str:
        """Publish (kept in the event stream): one operator command, after it ran."""
        return f"{self.prefix}.audit.{verb}"

    def audit_all(self) -> str:
        """Wildcard for every operator command event."""
        return f"{self.prefix}.audit.*"

    @property
    def admin_service(self) -> str:
        """The admin service's name in NATS service discovery (``$SRV.PING.<name>``)."""
        return f"swarmpool-admin-{self._name}"

    def inbox(self, role: str) -> str:
        """Inbox prefix of one bus role: replies to its requests arrive below it, and only it may subscribe there."""
        return f"_INBOX.{self._name}.{role}"

    # JetStream names (streams and buckets allow only [A-Za-z0-9_-])
    @property
    def instances_bucket(self) -> str:
        """KV bucket holding one record per instance, key ``<app>.<id>``."""
        return f"{self._name}_instances"

    @property
    def config_bucket(self) -> str:
        """KV bucket holding operator overrides (scale, pause), key ``pool.<app>``."""
        return f"{self._name}_config"

    @property
    def queue_bucket(self) -> str:
        """KV bucket holding the queues: one ticket per waiting student, key ``<app>.<ticket>``."""
        return f"{self._name}_queue"

    @property
    def leases_bucket(self) -> str:
        """KV bucket holding singleton leases (clock, swarm watcher); keys expire."""
        return f"{self._name}_leases"

    @property
    def events_stream(self) -> str:
        """Stream keeping every instance event, operator command and visit: the event log."""
        return f"{self._name}_events"

    @property
    def _name(self) -> str:
        return self.prefix.replace(".", "_").replace("-", "_")
