"""`swarmpool guard`: on every node of a deployed stack, closes each local instance in from inside its own network
namespace (no new connection out, IPv4 and IPv6), then opens the port the gateway and the prober reach it on.

An overlay has no inter-container switch to turn off, so on a cluster two instances on the stack's internal overlay
could reach each other (same node or not). The guard, a global service of the stack, watches its node's engine for
the stack's instance containers (by label) and runs a short-lived helper container of its own image in each one's
network namespace (`network_mode: container:<id>`, NET_ADMIN and NET_RAW only) that installs, in that namespace:

- filter `OUTPUT` -> `SWARMPOOL-GUARD`: loopback (the embedded DNS) and established/related accepted, anything
  else refused (a TCP reset, else ICMP port-unreachable), so the student's code fails at once;
- last, nat `PREROUTING`: TCP to GUARD_PORT redirected to the app's port.

The instance's service endpoint is `<service name>:GUARD_PORT` (swarm/model.py), where nothing answers before
that redirect exists: the prober cannot see it ready, and no claim can reach it, until its rules are in. The
instance itself runs without NET_ADMIN (catalogue guardrails), so it cannot change them.
"""

from __future__ import annotations

import logging
import queue
import shlex
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from swarmpool.swarm.model import LABEL_GUARD_PORT, LABEL_ID, LABEL_OWNER, LABEL_PORT

log = logging.getLogger(__name__)

CHAIN = "SWARMPOOL-GUARD"
LABEL_HELPER = "swarmpool.guard-helper"  # on the helper containers: the namespace whose instance they guard
HELPER_TIMEOUT = 60.0
# the helper's backend: the one Docker used in this namespace (its embedded DNS's nat rules), else nf_tables
_PICK = ('if iptables-legacy -w -t nat -S 2>/dev/null | grep -q DOCKER_; then V4=iptables-legacy V6=ip6tables-legacy; '
         'else V4=iptables-nft V6=ip6tables-nft; fi')


@dataclass(frozen=True)
class Target:
    """One instance container to close in: where it listens and where the guard opens it."""

    container_id: str
    instance_id: str
    app_port: int
    guard_port: int

    @property
    def short(self) -> str:
        return f"{self.instance_id[:8]} (container {self.container_id[:12]})"


def filter_rules() -> list[list[str]]:
    """The rules of SWARMPOOL-GUARD (without the tool's name), for iptables and ip6tables alike."""
    return [
        ["-A", CHAIN, "-o", "lo", "-j", "ACCEPT"],  # the embedded DNS (127.0.0.11) and the app's own ports
        ["-A", CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],  # replies
        ["-A", CHAIN, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-A", CHAIN, "-j", "REJECT"],
    ]


def redirect_rule(target: Target) -> list[str]:
    """The nat rule that opens the instance (without the tool's name and the -A/-C verb)."""
    return ["PREROUTING", "-t", "nat", "-p", "tcp", "--dport", str(target.guard_port), "-j", "REDIRECT",
            "--to-ports", str(target.app_port)]


def script(target: Target) -> str:
    """The helper's shell script: idempotent; the redirect, the readiness signal, comes last."""

    def run(tool: str, args: list[str]) -> str:
        return f'"${tool}" -w ' + shlex.join(args)

    redirect = redirect_rule(target)
    lines = ["set -eu", _PICK,
             f"if {run('V4', ['-C', *redirect])} 2>/dev/null; then echo already guarded; exit 0; fi"]
    for tool in ("V4", "V6"):
        chain = [f"{run(tool, ['-N', CHAIN])} 2>/dev/null || {run(tool, ['-F', CHAIN])}"]
        chain += [run(tool, rule) for rule in filter_rules()]
        chain.append(f"{run(tool, ['-C', 'OUTPUT', '-j', CHAIN])} 2>/dev/null || "
                     f"{run(tool, ['-I', 'OUTPUT', '1', '-j', CHAIN])}")
        if tool == "V6":  # only a kernel without IPv6 skips them (fails closed: an error leaves the port shut)
            chain = ["if [ -e /proc/net/if_inet6 ]; then"] + [f"  {c}" for c in chain] + ["fi"]
        lines += chain
    lines += [run("V4", ["-A", *redirect]), "echo guarded"]
    return "\n".join(lines) + "\n"


def target_of(container: Mapping[str, Any], namespace: str) -> Target | None:
    """The Target of a container as the engine lists or inspects it; None when it is not a guarded instance of
    `namespace` (another stack's, a published one, the stack's own services, a helper)."""
    labels = container.get("Labels") or (container.get("Config") or {}).get("Labels") or {}
    if labels.get(LABEL_OWNER) != namespace or not labels.get(LABEL_ID):
        return None
    try:
        app_port, guard_port = int(labels.get(LABEL_PORT, "")), int(labels.get(LABEL_GUARD_PORT, ""))
    except ValueError:
        return None
    return Target(container_id=str(container.get("Id", "")), instance_id=labels[LABEL_ID], app_port=app_port,
                  guard_port=guard_port)


def to_guard(running: Iterable[Mapping[str, Any]], namespace: str, done: set[str]) -> list[Target]:
    """The running instance containers of `namespace` that this guard has not closed in yet."""
    found = (target_of(c, namespace) for c in running)
    return [t for t in found if t is not None and t.container_id not in done]


class Guard:
    """The guard of one node: closes in each instance container of `namespace` that starts there."""

    def __init__(self, namespace: str, image: str, client: Any, interval: float = 10.0) -> None:
        self.namespace = namespace
        self.image = image
        self.client = client
        self.interval = interval
        self.done: set[str] = set()  # container ids whose rules are in
        self.started: queue.Queue[str] = queue.Queue()

    def close_in(self, target: Target) -> bool:
        """Run the helper in the target's network namespace; True once its rules are in."""
        api = self.client.api
        try:
            helper = api.create_container(
                self.image, entrypoint=["sh", "-c"], command=[script(target)], user="0",
                labels={LABEL_HELPER: self.namespace},
                host_config=api.create_host_config(network_mode=f"container:{target.container_id}",
                                                   cap_drop=["ALL"], cap_add=["NET_ADMIN", "NET_RAW"]))
        except Exception as err:  # the instance stopped meanwhile, the image is missing, the engine is down
            log.warning("cannot guard %s: %s", target.short, err)
            return False
        try:
            api.start(helper)
            code = api.wait(helper, timeout=HELPER_TIMEOUT).get("StatusCode")
            if code != 0:
                output = api.logs(helper, stdout=True, stderr=True).decode(errors="replace").strip()
                log.warning("guarding %s failed (exit %s): %s", target.short, code, output[-500:])
                return False
        except Exception as err:
            log.warning("guarding %s failed: %s", target.short, err)
            return False
        finally:
            self._remove(helper)
        log.info("guarded %s: no new connection out; open on port %d", target.short, target.guard_port)
        return True

    def _remove(self, helper: Any) -> None:
        try:
            self.client.api.remove_container(helper, force=True)
        except Exception as err:
            log.debug("helper %s not removed: %s", helper, err)

    def reconcile(self) -> None:
        """Close in every running instance not closed in yet; forget containers that are gone."""
        running = self.client.api.containers(filters={"label": f"{LABEL_OWNER}={self.namespace}",
                                                      "status": "running"})
        self.done &= {c["Id"] for c in running}
        for target in to_guard(running, self.namespace, self.done):
            if self.close_in(target):
                self.done.add(target.container_id)

    def on_start(self, container_id: str) -> None:
        """A container of the namespace started here: close it in now, if it is an instance."""
        if container_id in self.done:
            return
        try:
            target = target_of(self.client.api.inspect_container(container_id), self.namespace)
        except Exception as err:
            log.debug("started container %s gone: %s", container_id[:12], err)
            return
        if target is not None and self.close_in(target):
            self.done.add(target.container_id)

    def follow_events(self) -> None:
        """Queue the ids of the namespace's containers as they start (a thread; reconnects after errors)."""
        filters = {"type": "container", "event": "start", "label": f"{LABEL_OWNER}={self.namespace}"}
        while True:
            try:
                for event in self.client.api.events(filters=filters, decode=True):
                    container_id = event.get("id") or (event.get("Actor") or {}).get("ID")
                    if container_id:
                        self.started.put(container_id)
            except Exception as err:
                log.warning("engine events interrupted: %s", err)
            self.started.put("")  # reconcile: starts may have been missed meanwhile
            time.sleep(1.0)  # backoff before reconnecting to an engine that failed

    def clean_helpers(self) -> None:
        """Remove helpers a previous guard of this node left behind (killed mid-run)."""
        for helper in self.client.api.containers(all=True, filters={"label": f"{LABEL_HELPER}={self.namespace}"}):
            self._remove(helper["Id"])

    def run(self) -> None:
        """Follow starts and reconcile every `interval` seconds, forever."""
        threading.Thread(target=self.follow_events, name="engine-events", daemon=True).start()
        self.clean_helpers()
        next_reconcile = 0.0
        while True:
            now = time.monotonic()
            if now >= next_reconcile:
                try:
                    self.reconcile()
                except Exception as err:  # the engine is restarting: try again next period
                    log.warning("reconcile failed: %s", err)
                next_reconcile = time.monotonic() + self.interval
            try:
                container_id = self.started.get(timeout=max(0.0, next_reconcile - time.monotonic()))
            except queue.Empty:
                continue
            if container_id:
                self.on_start(container_id)
            else:
                next_reconcile = 0.0


def main(namespace: str, image: str, interval: float) -> int:
    """`swarmpool guard`: run the guard of this node (the engine of DOCKER_HOST) until stopped."""
    import docker

    client = docker.from_env(timeout=int(HELPER_TIMEOUT) + 10)
    log.info("guarding instances of %s on this node (helper image %s)", namespace, image)
    Guard(namespace, image, client, interval=interval).run()
    return 0
